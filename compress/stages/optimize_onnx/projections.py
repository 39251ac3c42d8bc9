"""Pack the matrix products that read the same input into one: a decoder layer's q/k/v
projections (all read the attention norm) and its gate/up projections (both read the MLP
norm), and an encoder layer's q/k/v where ONNX Runtime has no attention fusion for the model
(MPNet), become one MatMul over the concatenated weights (and one bias Add over the
concatenated biases), then a Split back into the original outputs.

Why: each MatMul is a separate pass over the activation and a separate kernel launch. After
dynamic INT8 the packed product is one DynamicQuantizeMatMul with the bias folded in, where
the separate ones share one activation quantization feeding three MatMulIntegerToFloat; with
per-channel weight scales (one per output column) the packed product computes the same
numbers as the separate ones. After weight-only quantization the
packed weight is one MatMulNBits with the same blocks per output column, so the results are
bit-identical. Float weights only: a graph quantized already is left alone."""

from __future__ import annotations

from collections import defaultdict


def _float_initializer(name: str, initializers: dict, rank: int):
    from onnx import TensorProto

    tensor = initializers.get(name)
    if tensor is None or len(tensor.dims) != rank or tensor.data_type != TensorProto.FLOAT:
        return None
    return tensor


def _float_weight(node, initializers: dict):
    """The 2-D float initializer a MatMul multiplies by, or None."""
    if node.op_type != "MatMul" or len(node.input) != 2:
        return None
    return _float_initializer(node.input[1], initializers, rank=2)


def _bias_add(node, readers: dict, initializers: dict, graph_outputs: set):
    """(the Add node, its 1-D float bias) when a MatMul's output is read only by an Add of a
    bias, else None: the pair is packed as one, so the bias Add still follows the MatMul."""
    if node.output[0] in graph_outputs:
        return None
    consumers = readers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Add" or consumers[0].domain not in ("", "ai.onnx"):
        return None
    add = consumers[0]
    others = [name for name in add.input if name != node.output[0]]
    bias = _float_initializer(others[0], initializers, rank=1) if len(others) == 1 else None
    return (add, bias) if bias is not None else None


def _packed_name(nodes: list) -> str:
    """'/model/layers.0/self_attn/q_proj/MatMul' ×3 → '/model/layers.0/self_attn/q_proj+k_proj+v_proj/MatMul'."""
    parts = [n.name.rsplit("/", 2) for n in nodes]
    if all(len(p) == 3 and p[0] == parts[0][0] and p[2] == parts[0][2] for p in parts):
        return f"{parts[0][0]}/{'+'.join(p[1] for p in parts)}/{parts[0][2]}"
    return "+".join(n.name for n in nodes)


def pack_shared_input_matmuls(model) -> list[str]:
    """Rewrite `model` (an onnx.ModelProto) in place; the names of the packed MatMuls. A group
    is packed where every MatMul has a float weight with the same input width, and either all
    of them or none are followed by a bias Add."""
    import numpy as np
    from onnx import helper, numpy_helper

    from compress.onnx_graph import consumers_of
    from compress.stages.optimize_onnx.rewrite import write_nodes

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    node_readers = consumers_of(graph.node)
    groups = defaultdict(list)
    for node in graph.node:
        weight = _float_weight(node, initializers)
        if weight is not None:
            groups[node.input[0]].append((node, weight, _bias_add(node, node_readers, initializers, graph_outputs)))
    replaced, dropped, added, names, typed = {}, set(), [], [], []
    for activation, group in groups.items():
        if len(group) < 2 or len({w.dims[0] for _, w, _ in group}) != 1:
            continue
        with_bias = [b is not None for _, _, b in group]
        if any(with_bias) and not all(with_bias):
            continue
        nodes = [n for n, _, _ in group]
        name = _packed_name(nodes)
        weights = [numpy_helper.to_array(w) for _, w, _ in group]
        packed = numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight")
        widths = numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{name}.widths")
        added += [packed, widths]
        product = f"{name}_output_0"
        parts = [helper.make_node("MatMul", [activation, packed.name], [product], name=name)]
        outputs = [n.output[0] for n in nodes]
        if all(with_bias):
            biases = [numpy_helper.to_array(b) for _, _, (_, b) in group]
            bias = numpy_helper.from_array(np.concatenate(biases), f"{name}.bias")
            added.append(bias)
            parts.append(helper.make_node("Add", [product, bias.name], [f"{name}/Add_output_0"], name=f"{name}/Add"))
            product = parts[-1].output[0]
            outputs = [add.output[0] for _, _, (add, _) in group]
            dropped.update(id(add) for _, _, (add, _) in group)
        parts.append(helper.make_node("Split", [product, widths.name], outputs, name=f"{name}/Split", axis=-1))
        # the tensors packing creates say their type: after a com.microsoft op (SkipLayerNormalization)
        # ONNX shape inference cannot derive it, and ORT's quantizer skips the MatMuls it cannot type
        typed += [helper.make_tensor_value_info(part.output[0], packed.data_type, None) for part in parts[:-1]]
        replaced[id(nodes[0])] = parts  # where the first of them was: every reader of the outputs comes later
        dropped.update(id(n) for n in nodes[1:])
        names.append(name)
    if not names:
        return []
    nodes = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    write_nodes(graph, nodes, added)
    graph.value_info.extend(typed)
    return names
