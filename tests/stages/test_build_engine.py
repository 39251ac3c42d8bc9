"""TensorRT: the CPU-checkable parts always; the build itself on a GPU (marked trt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import CompressError
from compress.stages.build_engine import ProfileSpec
from compress.trt_engine import (
    check_engine_compatible,
    check_qdq_for_tensorrt,
    compare_with_polygraphy,
    profile_shapes,
    summarize_layer_precisions,
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
    assert record["parity"]["max_abs_diff"] <= 0.05
    assert record["engine"]["layer_precisions"]["compute_layers"] > 0
    meta = json.loads((run_dir / "02-build_engine" / "engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["compute_capability"]
