"""TensorRT: the CPU-checkable parts always; the build itself on a GPU (marked trt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import CompressError, StageError
from compress.stages.build_engine import ProfileSpec
from compress.trt_engine import (
    check_engine_compatible,
    check_qdq_for_tensorrt,
    compare_with_polygraphy,
    layer_precision,
    profile_shapes,
    summarize_layer_precisions,
    tensor_precision,
    trt_unavailable_reason,
)
from tests.helpers import manifest, run_tiny, stage_json

DATA = Path(__file__).parents[1] / "data"


def test_profile_shapes_for_encoder_inputs():
    p = ProfileSpec(min_batch=1, opt_batch=8, max_batch=32, min_seq=4, opt_seq=64, max_seq=256)
    shapes = profile_shapes(p, ["input_ids", "attention_mask", "token_type_ids"])
    assert shapes["input_ids"] == ((1, 4), (8, 64), (32, 256))
    assert set(shapes) == {"input_ids", "attention_mask", "token_type_ids"}
    with pytest.raises(CompressError, match="pixel_values"):
        profile_shapes(p, ["pixel_values"])


def test_profile_order_is_validated_in_the_recipe(recipe_dir):
    from compress.errors import RecipeError
    from compress.recipe import load_recipe
    from tests.conftest import tiny_recipe_text

    stages = "\n  - kind: export_onnx\n  - kind: build_engine\n    profiles:\n      - {opt_seq: 512, max_seq: 128}\n"
    path = recipe_dir / "r.yaml"
    path.write_text(tiny_recipe_text(stages=stages))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.profiles\[0\]: need min_seq <= opt_seq <= max_seq \(got 1, 512, 128\)"):
        load_recipe(path)


def test_inspector_report_precision_summary():
    summary = summarize_layer_precisions((DATA / "trt_inspector_report.json").read_text())
    # Reformat / Shuffle / NoOp are bookkeeping, not compute
    assert summary["compute_layers"] == 8
    assert summary["by_precision"] == {"int32": 1, "fp16": 2, "int8": 4, "fp32": 1}
    assert summary["by_layer_type"]["CaskGemmMatrixMultiply"] == {"int8": 4, "fp32": 1}
    with pytest.raises(CompressError, match="verbosity DETAILED"):
        summarize_layer_precisions({"Layers": ["a", "b"]})


# "Format/Datatype" strings as TensorRT 8-10 engine inspectors write them (seen in the published
# TREx example reports of NVIDIA/TensorRT, tools/experimental/trt-engine-explorer: a QAT
# MobileNet and an fp16 ResNet; the parser counted 53 of their 54 compute layers int8 and all
# 23 fp16). Unlike the hand-written report, they carry no " format" suffix on FP32, put the
# precision mid-string after a vectorization, and mention channel counts with digits.
@pytest.mark.parametrize("text, precision", [
    ("Row major linear FP32", "fp32"),
    ("Four wide channel vectorized row major Int8 format", "int8"),
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
    ("Thirty-two wide channel vectorized row major FP16 format", "fp16"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Row major linear Int32 format", "int32"),
])
def test_tensor_precision_reads_real_inspector_formats(text, precision):
    assert tensor_precision(text) == precision


def test_layer_precision_is_the_lowest_input_precision():
    """An INT8 GEMM reads int8 and writes fp16 (a QAT MobileNet's 1x1 convolutions); a QDQ
    reformat is bookkeeping; a layer with no input formats falls back to its outputs."""
    gemm = {"LayerType": "CaskConvolution",
            "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
            "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major FP16 format"}]}
    residual = {**gemm, "Inputs": [*gemm["Inputs"], {"Format/Datatype": "Row major linear FP16 format"}]}
    assert layer_precision(gemm) == "int8" and layer_precision(residual) == "int8"
    assert layer_precision({"LayerType": "Constant", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}) == "fp32"
    reformat = {**gemm, "LayerType": "Reformat", "Origin": "QDQ"}
    summary = summarize_layer_precisions({"Layers": [reformat, gemm, residual]})
    assert summary["compute_layers"] == 2 and summary["by_precision"] == {"int8": 2}


def _qdq_model(path: Path, zero_point: np.ndarray) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(zero_point, "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
        helper.make_node("MatMul", ["xdq", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, scale, zp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_qdq_checks(tmp_path):
    assert check_qdq_for_tensorrt(_qdq_model(tmp_path / "sym.onnx", np.array(0, np.int8))) == []
    problems = check_qdq_for_tensorrt(_qdq_model(tmp_path / "asym.onnx", np.array(128, np.uint8)))
    assert len(problems) == 2 and "uint8 (asymmetric)" in problems[0]
    problems = check_qdq_for_tensorrt(_qdq_model(tmp_path / "zp.onnx", np.array(3, np.int8)))
    assert "non-zero zero point" in problems[0]


def test_engine_metadata_mismatch_is_refused():
    built = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    check_engine_compatible(built, dict(built), Path("model.engine"))
    with pytest.raises(CompressError, match=r"model\.engine: built for compute_capability '9\.0' but this machine has '8\.9'"):
        check_engine_compatible(built, {**built, "compute_capability": "8.9", "gpu": "L4"}, Path("model.engine"))


def test_build_engine_is_skipped_with_a_reason_without_tensorrt(tmp_path, tiny_classifier_dir):
    reason = trt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the stage runs instead (see test_engine_build_on_gpu)")
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: build_engine\n")
    m = manifest(run_dir)
    assert m["status"] == "completed"
    assert m["stages"][1]["status"] == "skipped" and m["stages"][1]["reason"] == reason
    assert not (run_dir / "02-build_engine").exists()
    assert m["final_artifact"] == {"kind": "onnx", "path": "01-export_onnx"}
    from compress.report import markdown_summary

    assert f"- 02-build_engine skipped: {reason}" in markdown_summary(run_dir)


def test_a_required_engine_fails_the_run_without_tensorrt(tmp_path, tiny_classifier_dir, monkeypatch):
    import compress.trt_engine

    monkeypatch.setattr(compress.trt_engine, "trt_unavailable_reason", lambda: "no CUDA GPU visible")
    with pytest.raises(StageError, match="build_engine has required: true but cannot run here: no CUDA GPU visible"):
        run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: build_engine\n    required: true\n")
    m = manifest(tmp_path / "runs" / "tiny")
    assert m["status"] == "failed" and "required: true" in m["error"]
    assert m["stages"][0]["status"] == "completed" and not (tmp_path / "runs" / "tiny" / "02-build_engine").exists()


def test_onnx_side_parity_with_polygraphy(tmp_path, tiny_classifier_dir):
    from compress.artifacts import ONNXModel
    from compress.sessions import ORTSession

    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n")
    model = ONNXModel(run_dir / "01-export_onnx")
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(100, 2000, (2, 12)).astype(np.int64),
            "attention_mask": np.ones((2, 12), np.int64), "token_type_ids": np.zeros((2, 12), np.int64)}
    result = compare_with_polygraphy(model.onnx_path, feed)
    (runner_outputs,) = result["outputs"].values()
    ours = ORTSession(model, threads=1).run(feed)
    np.testing.assert_allclose(runner_outputs["logits"], ours, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.trt
def test_engine_build_on_gpu(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: build_engine\n    precision: fp16\n    profiles: [{max_batch: 16, opt_seq: 32, max_seq: 64}]\n"
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    record = stage_json(run_dir, "02-build_engine")
    assert record["parity"]["passed"] and record["parity"]["label_agreement"] == 1.0
    # checked here against fp16's own resolution, not the stage's atol: 2^-11 relative rounding
    # per operation, a few dozen roundings deep in a 2-layer encoder
    from compress.artifacts import ONNXModel, TRTEngine
    from compress.sessions import open_session

    rng = np.random.default_rng(1)
    feed = {"input_ids": rng.integers(100, 2000, (4, 24)).astype(np.int64),
            "attention_mask": np.ones((4, 24), np.int64), "token_type_ids": np.zeros((4, 24), np.int64)}
    reference = open_session(ONNXModel(run_dir / "01-export_onnx"), 1).run(feed)
    engine = open_session(TRTEngine(run_dir / "02-build_engine"), 1).run(feed)
    bound = 64 * 2.0**-11 * max(1.0, float(np.abs(reference).max()))
    assert np.abs(np.asarray(engine) - np.asarray(reference)).max() <= bound
    summary = record["engine"]["layer_precisions"]
    assert summary["compute_layers"] > 0 and set(summary["by_precision"]) <= {"fp16", "fp32", "int32", "int64", "bool"}
    meta = json.loads((run_dir / "02-build_engine" / "engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["compute_capability"]
