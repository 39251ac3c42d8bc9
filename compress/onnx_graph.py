"""Read-only facts about an ONNX graph, shared by the stages that write graphs and the
package that describes them: its real inputs, what precision it computes in, and how
much of its matrix work runs in INT8."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

MATRIX_OPS = {"MatMul", "Gemm"}
FLOAT_MATRIX_OPS = MATRIX_OPS | {"Attention"}
INT8_MATMUL_OPS = {
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearMatMul",
}


def consumers_of(nodes) -> dict[str, list]:
    """The nodes reading each tensor name (a node reading a name twice is listed twice)."""
    readers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    return readers


def _is_qdq_fed(node, producers: dict) -> bool:
    """A float MatMul/Gemm whose two matrix inputs both come out of DequantizeLinear:
    ONNX Runtime (QDQ fusion) and TensorRT run it as an INT8 GEMM."""
    return all(producers.get(name) == "DequantizeLinear" for name in node.input[:2])


def count_int8_coverage(onnx_path: Path) -> dict:
    """Matrix-multiplying nodes (MatMul/Gemm/Attention) in the graph and how many run INT8:
    the integer ops of dynamic quantization, or float MatMul/Gemm fed by DequantizeLinear on
    both inputs (static Q/DQ, QAT). A MatMul whose weight alone is dequantized stays float work."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    producers = {out: n.op_type for n in nodes for out in n.output}
    ops = Counter(n.op_type for n in nodes)
    qdq = sum(1 for n in nodes if n.op_type in MATRIX_OPS and _is_qdq_fed(n, producers))
    int8 = sum(ops[o] for o in INT8_MATMUL_OPS) + qdq
    float_ = sum(ops[o] for o in FLOAT_MATRIX_OPS) - qdq
    int8_ops = {o: ops[o] for o in sorted(INT8_MATMUL_OPS) if ops[o]}
    if qdq:
        int8_ops["MatMul/Gemm (Q/DQ)"] = qdq
    return {
        "int8_matmul_nodes": int8,
        "float_matmul_nodes": float_,
        "int8_fraction": round(int8 / (int8 + float_), 4) if int8 + float_ else 0.0,
        "int8_ops": int8_ops,
        "qdq_pairs": min(ops["QuantizeLinear"], ops["DequantizeLinear"]),
    }


def graph_inputs(onnx_path: Path) -> list[str]:
    """Names of the graph's real inputs (initializers listed as inputs excluded)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


_INT8_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QAttention", "DynamicQuantizeMatMul",
             "QuantizeLinear", "DequantizeLinear", "ConvInteger", "QLinearConv", "MatMulIntegerToFloat"}


def onnx_precision(onnx_path: Path) -> str:
    """What the graph computes in, read from its ops and weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    for f in model.functions:
        ops |= {n.op_type for n in f.node}
    if ops & _INT8_OPS:
        static = "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
        return "int8 (static Q/DQ)" if static else "int8 (dynamic activations)"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def _constants(graph) -> dict:
    """Initializers and Constant nodes' values, by output name (numpy arrays)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def _dequantized(dq, values: dict, producers: dict):
    """The float tensor a DequantizeLinear of a constant produces (int8 initializer → DQ, or
    float initializer → QuantizeLinear → DQ), or None when its input is not constant."""
    import numpy as np

    source = dq.input[0]
    q = producers.get(source)
    if source not in values and q is not None and q.op_type == "QuantizeLinear" and q.input[0] in values:
        return values[q.input[0]].astype(np.float64)  # the unfolded weight: its float values, within a step
    if source not in values or dq.input[1] not in values:
        return None
    data = values[source].astype(np.float64)
    scale = values[dq.input[1]].astype(np.float64)
    zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] in values else 0.0
    if scale.ndim == 1 and data.ndim > 1:  # per-channel along `axis` (default 1)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % data.ndim
        shape = [1] * data.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return (data - zero) * scale


def output_step(onnx_path: Path) -> dict | None:
    """How far the graph's outputs move per quantization step of the last quantized
    MatMul/Gemm's input (the one nearest the outputs: the classifier or span head).

    y = dq(x) · W: one step s_x in every input of x moves output j by at most
    s_x · Σ_i |W_ij|, so `logit_step` = s_x · max_j Σ_i |W_ij| is the logit resolution of a
    static Q/DQ graph. None when the graph has no such node with a constant activation scale
    (float graphs; dynamic quantization, whose activation scales are computed per call)."""
    import numpy as np
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producers = {out: n for n in graph.node for out in n.output}
    values = _constants(graph)
    for node in reversed(graph.node):  # ONNX keeps nodes in topological order
        if node.op_type not in MATRIX_OPS:
            continue
        a, b = producers.get(node.input[0]), producers.get(node.input[1])
        transposed = False
        if b is not None and b.op_type == "Transpose":
            transposed, b = True, producers.get(b.input[0])
        if a is None or b is None or a.op_type != "DequantizeLinear" or b.op_type != "DequantizeLinear":
            continue
        if a.input[1] not in values:
            continue
        weight = _dequantized(b, values, producers)
        if weight is None or weight.ndim != 2:
            continue
        if transposed:
            weight = weight.T
        if node.op_type == "Gemm" and any(at.name == "transB" and at.i for at in node.attribute):
            weight = weight.T
        activation_scale = float(np.max(np.abs(values[a.input[1]])))
        column_l1 = float(np.abs(weight).sum(axis=0).max())
        return {"node": node.name or node.output[0], "activation_scale": activation_scale,
                "max_column_l1": round(column_l1, 6), "logit_step": activation_scale * column_l1}
    return None
