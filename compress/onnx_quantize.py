"""INT8 quantization of ONNX models with onnxruntime.quantization, and a count of
how much of the graph's matrix work runs in INT8."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from compress.artifacts import ONNXModel, copy_sidecar_files

FLOAT_MATMUL_OPS = {"MatMul", "Gemm", "Attention"}
INT8_MATMUL_OPS = {
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearMatMul",
}


def count_int8_coverage(onnx_path: Path) -> dict:
    """Matrix-multiplying nodes (MatMul/Gemm/Attention) in the graph and how many run INT8."""
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)
    int8 = sum(ops[o] for o in INT8_MATMUL_OPS)
    float_ = sum(ops[o] for o in FLOAT_MATMUL_OPS)
    # In Q/DQ graphs a float MatMul fed by DequantizeLinear still runs INT8 in ORT; counted with that work.
    return {"int8_matmul_nodes": int8, "float_matmul_nodes": float_, "int8_ops": {o: ops[o] for o in INT8_MATMUL_OPS if ops[o]}}


def quantize_dynamic_int8(model: ONNXModel, out_dir: Path, stage) -> tuple[ONNXModel, dict]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    result = ONNXModel(out_dir)
    quantize_dynamic(
        model.onnx_path,
        result.onnx_path,
        op_types_to_quantize=stage.op_types,
        per_channel=stage.per_channel,
        reduce_range=stage.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=stage.exclude_nodes or None,
        # Fused graphs carry contrib ops whose output types the quantizer cannot infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    copy_sidecar_files(model.path, out_dir)
    return result, count_int8_coverage(result.onnx_path)
