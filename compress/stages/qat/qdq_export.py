"""Export a quantization-aware torch model (NNCF, stripped) to an ONNX graph with
explicit QuantizeLinear/DequantizeLinear pairs, then tidy it so that every quantized
weight is initializer → Q → DQ → MatMul/Gemm: the shape ONNX Runtime's Q/DQ fusions
and TensorRT's explicit quantization look for.

The legacy (TorchScript) exporter is the one that turns NNCF's fake quantization into
Q/DQ; exporting an unstripped model instead emits FakeQuantize ops that ORT rejects."""

from __future__ import annotations

import logging
from pathlib import Path

from compress.onnx_graph import consumers_of

log = logging.getLogger(__name__)

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_qdq_onnx(model, example: dict, out_path: Path, opset: int,
                    output_names: tuple[str, ...] = ("logits",)) -> list[str]:
    """Export `model` (an encoder with a task head) with dynamic batch and sequence axes and
    the task's outputs (a per-token output keeps the sequence axis dynamic too); returns the
    graph's input names."""
    import torch

    names = [n for n in ENCODER_INPUTS if n in example]

    class Outputs(torch.nn.Module):  # positional inputs in a fixed order, the task's outputs out
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            out = self.inner(**dict(zip(names, tensors)))
            return tuple(getattr(out, name) for name in output_names)

    with torch.no_grad():
        per_token = Outputs(model).eval()(*(example[n] for n in names))[0].dim() >= 3 or len(output_names) > 1
    output_axes = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {name: output_axes for name in output_names}
    with torch.no_grad():
        torch.onnx.export(
            Outputs(model).eval(), tuple(example[n] for n in names), str(out_path),
            input_names=names, output_names=list(output_names), dynamic_axes=axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    tidy_qdq_graph(out_path)
    return names


def tidy_qdq_graph(onnx_path: Path) -> dict:
    """In place: route Identity-of-initializer edges to the initializer (the exporter
    dedupes equal zero points that way, which hides that they are constants), and fold
    `Q → DQ → Transpose` on a weight into a transposed initializer (F.linear exports its
    weight transposed after the fake quantization). Returns what was folded."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits, consumers = _index_graph(graph)

    # Identity(initializer) → the initializer itself
    removed, identities = [], 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            for user in consumers.get(node.output[0], []):
                user.input[:] = [node.input[0] if i == node.output[0] else i for i in user.input]
            removed.append(node)
            identities += 1

    # W → Q → DQ → Transpose([1, 0]) → users   becomes   W.T → Q → DQ → users
    transposes = 0
    by_output = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "Transpose" or node in removed:
            continue
        dq = by_output.get(node.input[0])
        q = by_output.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inits:
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        weight = inits[q.input[0]]
        if len(weight.dims) != 2 or (perm and list(perm[0]) != [1, 0]):
            continue
        if any(len(consumers.get(t, [])) != 1 for t in (q.input[0], q.output[0], dq.output[0])):
            continue  # shared: transposing in place would change another user
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name))
        for qdq in (q, dq):
            for attr in qdq.attribute:
                if attr.name == "axis":
                    attr.i = 1 - (attr.i % 2)  # the channel axis moves with the transpose
        for user in consumers.get(node.output[0], []):
            user.input[:] = [dq.output[0] if i == node.output[0] else i for i in user.input]
        removed.append(node)
        transposes += 1

    for node in removed:
        graph.node.remove(node)
    onnx.save(model, str(onnx_path))
    return {"identities_folded": identities, "weight_transposes_folded": transposes}


def activations_to_uint8(onnx_path: Path) -> int:
    """In place: rewrite every int8 activation Q/DQ pair as uint8 with zero point + 128.
    Exact (round(x/s) + z clamped to [-128, 127], shifted by 128, dequantizes to the same
    values) and it moves ONNX Runtime on x86 from its slow S8S8 path to the U8S8 kernels;
    TensorRT, which wants int8, then cannot take the graph. Weights stay int8. Returns the
    number of pairs rewritten."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits, consumers = _index_graph(graph)
    rewritten = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if q.input[0] in inits or len(q.input) < 3 or q.input[2] not in inits:
            continue  # a weight, or a zero point we cannot see
        zero = numpy_helper.to_array(inits[q.input[2]])
        if zero.dtype != np.int8:
            continue
        name = f"{q.input[2]}_uint8"
        if name not in inits:
            shifted = (zero.astype(np.int16) + 128).astype(np.uint8)
            inits[name] = numpy_helper.from_array(shifted, name)
            graph.initializer.append(inits[name])
        dqs = [d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        for node in (q, *dqs):
            node.input[2] = name
        rewritten += 1
    onnx.save(model, str(onnx_path))
    return rewritten


def fold_weight_quantization(onnx_path: Path) -> int:
    """In place: replace `float initializer → QuantizeLinear` on weights by the quantized
    initializer itself (int8 weight → DequantizeLinear → MatMul). Otherwise ONNX Runtime
    quantizes every weight again on each call; TensorRT reads either form. Rounding is
    half-to-even, as QuantizeLinear specifies. Returns the number of weights folded."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits, consumers = _index_graph(graph)
    folded, removed = 0, []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if len(q.input) < 3 or not all(name in inits for name in q.input[:3]):
            continue  # an activation, or a default zero point (uint8) we leave alone
        users = consumers.get(q.output[0], [])
        if not users or any(u.op_type != "DequantizeLinear" for u in users):
            continue
        weight = numpy_helper.to_array(inits[q.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[q.input[2]])
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along the axis
            shape = [1] * weight.ndim
            shape[axis % weight.ndim] = scale.size
            scale, zero_b = scale.reshape(shape), zero.reshape(shape).astype(np.int32)
        else:
            zero_b = zero.astype(np.int32)
        info = np.iinfo(zero.dtype)
        quantized = np.clip(np.rint(weight / scale) + zero_b, info.min, info.max).astype(zero.dtype)
        name = f"{q.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        for dq in users:
            dq.input[0] = name
        removed.append(q)
        folded += 1
    for q in removed:
        graph.node.remove(q)
    still_used = {name for node in graph.node for name in node.input}
    for t in [t for t in graph.initializer if t.name not in still_used]:
        graph.initializer.remove(t)  # the float weights now nothing reads
    onnx.save(model, str(onnx_path))
    return folded


def _index_graph(graph) -> tuple[dict, dict[str, list]]:
    """Initializers by name, and the nodes consuming each tensor name."""
    return {t.name: t for t in graph.initializer}, consumers_of(graph.node)


def gather_before_dequantize(onnx_path: Path) -> int:
    """In place: `int8 table → DequantizeLinear → Gather(ids)` (a quantized embedding)
    becomes `Gather` of the int8 rows, then their dequantization. The other order
    dequantizes the whole table on every call: for MPNet-base's 30,527 × 768 word
    embeddings that was half of a batch-1 call on ONNX Runtime CPU. Exact: the same
    (q - zero point) × scale, on the gathered rows only. Handles per-tensor scales and
    per-row scales (axis 0, gathered alongside). Returns the number of lookups rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits, consumers = _index_graph(graph)
    graph_outputs = {o.name for o in graph.output}
    last_axis = "gather_dq_last_axis"
    rewritten, new_nodes_at, replaced_dqs = 0, {}, set()
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        if not all(name in inits for name in dq.input) or len(dq.input) < 3 or dq.output[0] in graph_outputs:
            continue
        users = consumers.get(dq.output[0], [])
        gathers = [u for u in users if u.op_type == "Gather" and u.input[0] == dq.output[0]
                   and next((a.i for a in u.attribute if a.name == "axis"), 0) == 0]
        if not gathers or len(gathers) != len(users):
            continue
        table, scale, zero = (numpy_helper.to_array(inits[name]) for name in dq.input)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % table.ndim
        per_row = scale.ndim == 1 and scale.size > 1
        if per_row and axis != 0:
            continue  # per-column scales: left as they are
        for gather in gathers:
            p = f"{gather.output[0]}_int8"
            nodes = [helper.make_node("Gather", [dq.input[0], gather.input[1]], [f"{p}_rows"], axis=0)]
            if not per_row:
                nodes.append(helper.make_node("DequantizeLinear", [f"{p}_rows", *dq.input[1:]], [gather.output[0]]))
            else:
                nodes += [
                    helper.make_node("Cast", [f"{p}_rows"], [f"{p}_float"], to=onnx.TensorProto.FLOAT),
                    helper.make_node("Gather", [dq.input[1], gather.input[1]], [f"{p}_scale"], axis=0),
                    helper.make_node("Unsqueeze", [f"{p}_scale", last_axis], [f"{p}_scale_col"]),
                ]
                rows = f"{p}_float"
                if np.any(zero):
                    nodes += [
                        helper.make_node("Gather", [dq.input[2], gather.input[1]], [f"{p}_zero"], axis=0),
                        helper.make_node("Cast", [f"{p}_zero"], [f"{p}_zero_float"], to=onnx.TensorProto.FLOAT),
                        helper.make_node("Unsqueeze", [f"{p}_zero_float", last_axis], [f"{p}_zero_col"]),
                        helper.make_node("Sub", [rows, f"{p}_zero_col"], [f"{p}_centred"]),
                    ]
                    rows = f"{p}_centred"
                nodes.append(helper.make_node("Mul", [rows, f"{p}_scale_col"], [gather.output[0]]))
            new_nodes_at[id(gather)] = nodes
            rewritten += 1
        replaced_dqs.add(id(dq))  # every reader of the table's float form is rewritten
    if not rewritten:
        return 0
    if last_axis not in inits:
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), last_axis))
    kept = []
    for node in graph.node:  # each replacement where its Gather stood: the graph stays sorted
        if id(node) not in replaced_dqs:
            kept.extend(new_nodes_at.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in kept for name in node.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
    onnx.save(model, str(onnx_path))
    return rewritten
