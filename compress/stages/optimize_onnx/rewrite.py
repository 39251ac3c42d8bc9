"""What optimize_onnx's own graph rewrites share (the decoder rewrites, the projection packing,
the CPU split): who reads each tensor, reading a node's attribute, and writing a rewritten node
list back into the graph."""

from __future__ import annotations


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


def consumers_of(nodes) -> dict[str, list]:
    """The nodes reading each tensor name (a node reading a name twice is listed twice)."""
    from collections import defaultdict

    readers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    return readers


def node_attribute(node, name: str, default=None):
    """The value of a node's attribute `name`, or `default` where the node has none."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
