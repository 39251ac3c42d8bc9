"""The read-only stage context: references to earlier artifacts, the input's record, and
the typed manifest it is built from."""

from __future__ import annotations

import pytest

from compress.artifacts import ONNXModel, TorchModel
from compress.context import RunContext
from compress.errors import StageError
from compress.manifest import Manifest, StageEntry
from compress.recipe import load_recipe
from tests.helpers import run_tiny

STAGES = "\n  - kind: finetune\n    max_steps: 1\n    batch_size: 8\n  - kind: export_onnx\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base_dir) -> RunContext:
    tmp = tmp_path_factory.mktemp("ctx")
    run_dir = run_tiny(tmp, tiny_base_dir, STAGES)
    return RunContext(load_recipe(tmp / "recipe.yaml"), run_dir)


def test_manifest_reads_back_typed(run):
    manifest = Manifest.read(run.run_dir)
    assert manifest.status == "completed" and manifest.task == "text-classification"
    assert [(e.name, e.status, e.artifact) for e in manifest.stages] == [
        ("01-finetune", "completed", "torch"), ("02-export_onnx", "completed", "onnx")]
    assert set(manifest.stages[1].metrics) == {"accuracy", "macro_f1"} and manifest.done_stages() == manifest.stages


def test_artifact_of_resolves_stage_references_and_kinds(run, tmp_path):
    ctx = run.stage_context(2, "ptq", tmp_path)
    assert ctx.artifact_of("stage:1") == TorchModel(run.run_dir / "01-finetune")
    assert ctx.artifact_of("stage:02-export_onnx") == ONNXModel(run.run_dir / "02-export_onnx")
    assert ctx.artifact_of("stage:finetune") == ctx.artifact_of("torch")
    assert ctx.artifact_of("onnx").path.name == "02-export_onnx"
    with pytest.raises(StageError, match="no earlier stage of this run made a TensorRT engine"):
        ctx.artifact_of("trt")
    with pytest.raises(StageError, match="expected 'stage:<n|name|kind>' or one of torch, onnx, trt"):
        ctx.artifact_of("02-export_onnx")


def test_a_skipped_stage_has_no_artifact_to_refer_to(run, tmp_path):
    skipped = StageEntry(name="03-build_engine", kind="build_engine", status="skipped", reason="no GPU")
    run.manifest.stages.append(skipped)
    try:
        recipe = run.recipe.model_copy(update={"stages": [*run.recipe.stages, *run.recipe.stages[1:]]})
        ctx = RunContext(recipe, run.run_dir, manifest=run.manifest).stage_context(3, "export_onnx", tmp_path)
        with pytest.raises(StageError, match=r"stage:3 \(03-build_engine\) has no artifact: it was skipped: no GPU"):
            ctx.artifact_of("stage:3")
    finally:
        run.manifest.stages.remove(skipped)


def test_the_input_record_is_read_once_and_summarised(run, tmp_path):
    calls = []

    def read():
        calls.append(1)
        return {"accuracy": 0.75, "parameters": 10, "latency": {"p50_ms": 1.5}, "other": "x"}

    ctx = run.stage_context(2, "ptq", tmp_path, read_input_record=read)
    assert ctx.input_summary() == {"accuracy": 0.75, "parameters": 10, "latency_p50_ms": 1.5, "structure": None}
    assert ctx.input_record["other"] == "x" and len(calls) == 1
