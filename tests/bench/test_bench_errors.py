"""Bad specs fail with one line naming the file and the field, exit 2, before any cell
runs; a crash mid-run keeps the finished rows; targets report why they cannot run."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import tiny_recipe_text

runner = CliRunner()


@pytest.fixture
def artifacts(tmp_path, tiny_classifier_dir):
    """A torch checkpoint, an ONNX directory and an engine directory (sidecar files only:
    the plan never opens them, so the graph and engine bytes are placeholders)."""
    torch_dir = shutil.copytree(tiny_classifier_dir, tmp_path / "torch")
    for name, file in (("onnx", "model.onnx"), ("engine", "model.engine")):
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (torch_dir / f).exists():
                shutil.copy(torch_dir / f, d / f)
        (d / file).write_bytes(b"placeholder")
    (tmp_path / "engine" / "engine.json").write_text("{}")
    return tmp_path


def bench(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = runner.invoke(app, ["bench", str(spec), "--out", str(tmp_path / "out")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    return spec, result, lines


def assert_one_line_error(result, lines, tmp_path, expected: str):
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_missing_model(artifacts):
    spec, result, lines = bench(artifacts, "models: [nowhere]\ntargets: [torch-cpu]\nshapes: {real: false, seq_lens: [8]}\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: models[0]: {artifacts / 'nowhere'} not found")


def test_engine_on_ort_cpu(artifacts):
    spec, result, lines = bench(artifacts, "models:\n  - path: engine/model.engine\n    targets: [ort-cpu]\n"
                                           "shapes: {real: false, seq_lens: [8]}\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: models: engine/model.engine is a TensorRT engine; "
                                                    "target ort-cpu runs an ONNX model")


def test_onnx_with_only_torch_targets(artifacts):
    spec, result, lines = bench(artifacts, "models: [onnx/model.onnx]\ntargets: [torch-cpu, torch-cuda]\n"
                                           "shapes: {real: false, seq_lens: [8]}\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: models: no target in ['torch-cpu', 'torch-cuda'] runs "
                                                    "onnx/model.onnx (an ONNX model; it runs on: ort-cpu, ort-cuda, ort-trt)")


@pytest.mark.parametrize("shapes, expected", [
    ("{batch_sizes: []}", "shapes.batch_sizes: List should have at least 1 item after validation, not 0"),
    ("{real: false}", "shapes: no shapes to measure: seq_lens is empty and real is false"),
    ("{seq_lens: [0]}", "shapes.seq_lens: must be positive integers (got [0])"),
])
def test_empty_or_bad_shapes(artifacts, shapes, expected):
    spec, result, lines = bench(artifacts, f"models: [torch]\nshapes: {shapes}\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: {expected}")


def test_real_lengths_need_eval_data(artifacts):
    spec, result, lines = bench(artifacts, "models: [torch]\ntargets: [torch-cpu]\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: shapes.real: torch has no eval data")


def test_typo_suggests_the_field(artifacts):
    spec, result, lines = bench(artifacts, "models: [torch]\ntarget: [torch-cpu]\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: target: unknown field (did you mean 'targets'?)")


def test_unknown_target(artifacts):
    spec, result, lines = bench(artifacts, "models: [torch]\ntargets: [tpu]\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: targets[0]: Input should be 'torch-cpu', 'ort-cpu'")


def test_baseline_must_be_torch(artifacts):
    spec, result, lines = bench(artifacts, "models: [torch]\nbaseline: onnx/model.onnx\nshapes: {real: false, seq_lens: [8]}\n")
    assert_one_line_error(result, lines, artifacts, f"{spec}: baseline: {artifacts / 'onnx' / 'model.onnx'} must be a torch checkpoint")


def test_recipe_benchmark_block_is_validated(recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text() + "benchmark:\n  targets: [ort-cpu]\n  min_iteration: 3\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: benchmark.min_iteration: unknown field (did you mean 'min_iterations'?)" in result.output


def test_crash_mid_run_keeps_finished_rows(artifacts, monkeypatch):
    from compress.bench import runner as bench_runner
    from compress.bench.plan import build_plan, resolve_models
    from compress.bench.spec import load_bench_spec

    spec = artifacts / "spec.yaml"
    spec.write_text("models: [torch]\ntargets: [torch-cpu]\nshapes: {real: false, seq_lens: [8, 16, 32]}\n")
    settings = load_bench_spec(spec)
    plan = build_plan(resolve_models(settings), settings)
    calls = []

    def flaky(cell, settings, work):  # the second cell kills the run
        calls.append(cell.seq_len)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"status": "ok", "p50_ms": 1.0, "p99_ms": 2.0}

    monkeypatch.setattr(bench_runner, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        bench_runner.run_plan(plan, settings, artifacts / "out")
    rows = [json.loads(line) for line in (artifacts / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["shape"], r["status"]) for r in rows] == [("b1x8", "ok")]


def test_ort_refuses_silent_cpu_fallback(tiny_classifier_dir, tmp_path):
    import onnxruntime as ort

    from compress.artifacts import ONNXModel
    from compress.errors import CompressError
    from compress.sessions import ORTSession

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider available: no fallback to provoke")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, 4])])
    d = shutil.copytree(tiny_classifier_dir, tmp_path / "onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "model.onnx")
    ORTSession(ONNXModel(d), 1)  # the CPU provider itself is fine
    with pytest.raises(CompressError, match="did not enable CUDAExecutionProvider .* fell back to CPUExecutionProvider"):
        ORTSession(ONNXModel(d), 1, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_targets_command_lists_every_target_with_a_reason():
    from compress.bench.targets import TARGETS

    result = runner.invoke(app, ["targets"])
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln for ln in result.output.splitlines() if ln.strip()}
    assert set(lines) == set(TARGETS)
    assert "available" in lines["torch-cpu"] and "unavailable" not in lines["torch-cpu"]
    for name, line in lines.items():
        assert "available" in line
        if "unavailable" in line:
            assert len(line.split("unavailable:", 1)[1].strip()) > 10  # a reason, not just a verdict


def test_disabled_target_becomes_a_skipped_cell(artifacts, monkeypatch):
    from compress.bench.plan import build_plan, resolve_models
    from compress.bench.spec import load_bench_spec

    monkeypatch.setenv("COMPRESS_BENCH_DISABLE", "torch-cpu")
    spec = artifacts / "spec.yaml"
    spec.write_text("models: [torch]\ntargets: [torch-cpu]\nshapes: {real: false, seq_lens: [8, 16]}\n")
    settings = load_bench_spec(spec)
    cells = build_plan(resolve_models(settings), settings).cells
    assert [(c.target, c.skipped) for c in cells] == [("torch-cpu", "disabled by COMPRESS_BENCH_DISABLE=torch-cpu")]
