"""Pack the matrix products that read the same input into one: a decoder layer's q/k/v
projections (all read the attention norm) and its gate/up projections (both read the MLP
norm) become one MatMul over the concatenated weights, then a Split back into the original
outputs. At one token per step each MatMul is a separate pass over a small activation and a
separate kernel launch; after weight-only quantization the packed weight is one MatMulNBits
instead of three (or two), with the same blocks per output column, so the results are
bit-identical. Float weights only: a graph quantized already is left alone."""

from __future__ import annotations

from collections import defaultdict


def _float_weight(node, initializers: dict):
    """The 2-D float initializer a MatMul multiplies by, or None."""
    from onnx import TensorProto

    weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
    if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
        return None
    return weight


def _packed_name(nodes: list) -> str:
    """'/model/layers.0/self_attn/q_proj/MatMul' ×3 → '/model/layers.0/self_attn/q_proj+k_proj+v_proj/MatMul'."""
    parts = [n.name.rsplit("/", 2) for n in nodes]
    if all(len(p) == 3 and p[0] == parts[0][0] and p[2] == parts[0][2] for p in parts):
        return f"{parts[0][0]}/{'+'.join(p[1] for p in parts)}/{parts[0][2]}"
    return "+".join(n.name for n in nodes)


def pack_shared_input_matmuls(model) -> list[str]:
    """Rewrite `model` (an onnx.ModelProto) in place; the names of the packed MatMuls."""
    import numpy as np
    from onnx import helper, numpy_helper

    from compress.stages.optimize_onnx.rewrite import write_nodes

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = defaultdict(list)
    for node in graph.node:
        weight = _float_weight(node, initializers)
        if weight is not None:
            readers[node.input[0]].append((node, weight))
    replaced, dropped, added, names = {}, set(), [], []
    for activation, group in readers.items():
        if len(group) < 2 or len({w.dims[0] for _, w in group}) != 1:
            continue
        nodes = [n for n, _ in group]
        name = _packed_name(nodes)
        weights = [numpy_helper.to_array(w) for _, w in group]
        packed = numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight")
        widths = numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{name}.widths")
        added += [packed, widths]
        replaced[id(nodes[0])] = [  # where the first of them was: every reader of the outputs comes later
            helper.make_node("MatMul", [activation, packed.name], [f"{name}_output_0"], name=name),
            helper.make_node("Split", [f"{name}_output_0", widths.name], [n.output[0] for n in nodes],
                             name=f"{name}/Split", axis=-1),
        ]
        dropped.update(id(n) for n in nodes[1:])
        names.append(name)
    if not names:
        return []
    nodes = []
    for node in graph.node:
        if id(node) not in dropped:
            nodes.extend(replaced.get(id(node), [node]))
    write_nodes(graph, nodes, added)
    return names
