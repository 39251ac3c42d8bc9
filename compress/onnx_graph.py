"""Read-only facts about an ONNX graph, shared by the stages that write graphs and the
package that describes them: its real inputs, what precision it computes in, and how
much of its matrix work runs in INT8."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

MATRIX_OPS = {"MatMul", "Gemm"}
FLOAT_MATRIX_OPS = MATRIX_OPS | {"Attention"}
INT8_MATMUL_OPS = {
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearMatMul",
}


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
