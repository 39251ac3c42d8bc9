"""What optimize_onnx's own graph rewrites share (the attention fusions, the projection packing,
the CPU split): who reads and who makes each tensor, matching a pattern node by node, reading a
node's attribute, ordering and pruning a rewritten node list and writing it back into the graph."""

from __future__ import annotations

from collections import defaultdict

from compress.onnx_graph import consumers_of


def write_nodes(graph, nodes: list, new_initializers: list = ()) -> None:
    """Make `nodes` (the graph's own node messages and new ones, in order) the graph's nodes,
    add `new_initializers`, and drop every initializer nothing reads any more. The rewrites
    build a Python list and write it once: a repeated field copies what it is given. Unread
    initializers are deleted in place, so the weights the graph keeps are not copied."""
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for n in nodes for name in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in read:
            del graph.initializer[i]
    graph.initializer.extend(new_initializers)


def node_attribute(node, name: str, default=None):
    """The value of a node's attribute `name`, or `default` where the node has none."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class NoMatch(Exception):
    """The nodes around a node are not the pattern a rewrite looks for (it leaves them as they are)."""


class Graph:
    """Producer/consumer lookups over a list of nodes (the graph's own messages: a repeated
    field copies what it is given, so the graph is written once, at the end), and constants."""

    def __init__(self, nodes: list, initializers):
        from onnx import numpy_helper

        self.producer = {out: node for node in nodes for out in node.output}
        self.consumers = consumers_of(nodes)
        self.initializers = {t.name: t for t in initializers}
        self._to_array = numpy_helper.to_array

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            raise NoMatch(f"{name} comes from {node.op_type if node else 'no node'}, not {op_type}")
        return node

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type:
            raise NoMatch(f"{name} feeds {[u.op_type for u in users]}, not one {op_type}")
        return users[0]

    def constant(self, name: str):
        """The numpy value of an initializer or Constant node's output."""
        if name in self.initializers:
            return self._to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return self._to_array(node.attribute[0].t)
        raise NoMatch(f"{name} is not a constant")


def topological(nodes: list) -> list:
    """`nodes` in an order where every input is made before it is read (the fused node now
    writes the present key/value that shape nodes placed earlier may read); otherwise the
    original order (Kahn's algorithm, earliest original position first)."""
    import heapq

    made_at = {out: i for i, n in enumerate(nodes) for out in n.output}
    readers, waiting = defaultdict(list), [0] * len(nodes)
    for i, n in enumerate(nodes):
        sources = {made_at[name] for name in n.input if name in made_at}
        waiting[i] = len(sources)
        for j in sources:
            readers[j].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(ordered) != len(nodes):
        raise ValueError("the fused attention graph has a cycle")
    return ordered


def alive(nodes: list, removed: set[int], outputs: set[str]) -> list:
    """`nodes` without the `removed` ones and without every node nothing reads any more."""
    nodes = [n for n in nodes if id(n) not in removed]
    while True:
        read = {name for n in nodes for name in n.input} | outputs
        alive = [n for n in nodes if any(out in read for out in n.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


ATTENTION_OPSET = 23  # the first ONNX opset with the Attention operator
HEADS_FIRST = [0, 2, 1, 3]  # Transpose perm: (batch, seq, heads, dim) <-> (batch, heads, seq, dim)


def require_attention_opset(model) -> None:
    """Raise the model's default-domain opset to one with ONNX Attention (and the IR version it needs)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, ATTENTION_OPSET)
    model.ir_version = max(model.ir_version, 10)  # opset 23 needs IR version 10
