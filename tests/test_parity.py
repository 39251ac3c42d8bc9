"""The quantized-graph parity criterion: the logit step read from a Q/DQ graph, checked
against what ONNX Runtime does when every input of the last quantized MatMul moves one
quantization step, and the verdict on a comparison."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.onnx_graph import output_step
from compress.parity import judge

X_SCALE = 0.05
W_INT8 = np.array([[1, -2], [3, 4], [-5, 6]], np.int8)  # [in 3, out 2]
W_SCALE = np.array([0.1, 0.2], np.float32)  # per output channel
# dequantized W = [[0.1, -0.4], [0.3, 0.8], [-0.5, 1.2]]: column L1 norms 0.9 and 2.4


def _head(path, gemm: bool = False):
    """x → Q → DQ → MatMul (or Gemm with transB) with an int8 per-channel weight → DQ: a classifier head."""
    weight = W_INT8.T.copy() if gemm else W_INT8
    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(weight, "w"), numpy_helper.from_array(W_SCALE, "ws"),
             numpy_helper.from_array(np.zeros(2, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0 if gemm else 1)]
    nodes.append(helper.make_node("Gemm", ["xd", "wd"], ["y"], name="classifier", transB=1) if gemm
                 else helper.make_node("MatMul", ["xd", "wd"], ["y"], name="classifier"))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("gemm", [False, True])
def test_logit_step_of_a_qdq_head(tmp_path, gemm):
    step = output_step(_head(tmp_path / "head.onnx", gemm))
    assert step["node"] == "classifier" and step["activation_scale"] == pytest.approx(X_SCALE)
    assert step["max_column_l1"] == pytest.approx(2.4) and step["logit_step"] == pytest.approx(0.12)


def test_one_step_in_every_input_moves_a_logit_by_at_most_the_logit_step(tmp_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(_head(tmp_path / "head.onnx")), providers=["CPUExecutionProvider"])
    levels = np.random.default_rng(0).integers(-100, 100, (256, 3))
    x = (levels * X_SCALE).astype(np.float32)
    base = session.run(None, {"x": x})[0]
    worst = 0.0
    for signs in np.array(np.meshgrid(*[[-1, 1]] * 3)).T.reshape(-1, 3):  # every direction of a one-level move
        moved = session.run(None, {"x": (x + signs * X_SCALE).astype(np.float32)})[0]
        worst = max(worst, float(np.abs(moved - base).max()))
    step = output_step(tmp_path / "head.onnx")["logit_step"]
    assert worst == pytest.approx(step, rel=1e-5)  # the bound is reached: the column signs line up


def test_a_float_graph_has_no_logit_step(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    assert output_step(tmp_path / "f.onnx") is None


def test_judge_fails_on_the_tolerance_or_on_agreement():
    compared = {"max_abs_diff": 0.05, "p99_abs_diff": 0.01, "mean_abs_diff": 0.002, "label_agreement": 0.98}
    step = {"steps": 1.0, "logit_step": 0.06}
    ok = judge(compared, 0.06, 0.97, step)
    assert ok["passed"] and "failure" not in ok and ok["max_abs_diff_steps"] == pytest.approx(0.8333, abs=1e-4)
    assert judge(compared, 0.04, 0.97)["failure"] == "max |logit difference| 0.05 > atol 0.04"
    assert judge(compared, 0.06, 0.99)["failure"] == "agreement 98.00% < min_agreement 99.00%"
    both = judge(compared, 0.04, 0.99)
    assert not both["passed"] and both["failure"].count(";") == 1


@pytest.mark.parametrize("precision, atol, expected", [
    ("int8", None, 2 * 0.12),  # the quantized criterion: parity_steps (2) x the head's logit step
    ("best", None, 2 * 0.12),
    ("fp16", None, 0.05),  # a float build of the same graph keeps the float tolerance
    ("int8", 0.3, 0.3),  # an atol given wins
])
def test_build_engine_takes_the_quantized_criterion_for_an_int8_build(tmp_path, precision, atol, expected):
    from compress.artifacts import ONNXModel
    from compress.stages.build_engine import BuildEngineStage

    (tmp_path / "m").mkdir()
    _head(tmp_path / "m" / "model.onnx")
    stage = BuildEngineStage(kind="build_engine", precision=precision, atol=atol)
    criterion = stage.parity_criterion(ONNXModel(tmp_path / "m"))
    assert criterion["atol"] == pytest.approx(expected)
    assert ("min_agreement" in criterion) == (atol is None and precision != "fp16")
