"""benchmarks/ptq_fidelity's SmoothQuant-style scaling: the fp32 function is unchanged and the
quantized activation's channels come out of the Mul with evened ranges."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.ptq_fidelity.fidelity import smooth_matmuls

HIDDEN, OUT = 8, 4


def _gelu_then_matmul() -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((HIDDEN, OUT)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft", name="gelu"),
         helper.make_node("MatMul", ["g", "w"], ["y"], name="layer.0/output/dense/MatMul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("g", "y")], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(model, x, outputs=("y",)):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {"x": x})


def test_smoothing_keeps_the_function_and_evens_the_channels():
    x = np.random.default_rng(1).standard_normal((2, 5, HIDDEN)).astype(np.float32)
    x[..., 3] *= 40  # one outlier channel, as MPNet's GELU outputs have
    model = _gelu_then_matmul()
    (gelu,) = _run(model, x, ("g",))
    before = np.abs(gelu).reshape(-1, HIDDEN).max(0)
    (y,) = _run(model, x)

    assert smooth_matmuls(model, r"output/dense", {"g": before}, alpha=0.7) == 1
    model.graph.output.append(helper.make_tensor_value_info("layer.0/output/dense/MatMul/smoothed", TensorProto.FLOAT, None))
    y_smoothed, scaled = _run(model, x, ("y", "layer.0/output/dense/MatMul/smoothed"))
    np.testing.assert_allclose(y_smoothed, y, rtol=1e-4, atol=1e-4)
    after = np.abs(scaled).reshape(-1, HIDDEN).max(0)
    assert after.max() / np.median(after) < before.max() / np.median(before) / 3


def test_smoothing_leaves_other_matmuls_alone():
    model = _gelu_then_matmul()
    assert smooth_matmuls(model, r"attention", {"g": np.ones(HIDDEN, np.float32)}, alpha=0.7) == 0
    assert [n.op_type for n in model.graph.node] == ["Gelu", "MatMul"]
