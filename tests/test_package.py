"""The package stage: a tiny export → ptq → package run, checked from the outside
(ONNX graph, a fresh process with only the light runtime, Triton's config schema)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.artifacts import ONNXModel
from compress.errors import RecipeError, StageError
from compress.recipe import load_recipe
from tests.conftest import tiny_recipe_text
from tests.helpers import manifest, run_tiny, stage_json

STAGES = "\n  - kind: export_onnx\n  - kind: ptq\n  - kind: package\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_classifier_dir) -> Path:
    return run_tiny(tmp_path_factory.mktemp("pkg"), tiny_classifier_dir, STAGES)


@pytest.fixture(scope="module")
def package(run_dir) -> Path:
    return run_dir / "03-package"


def _eval_texts(run_dir: Path, n: int = 20) -> list[str]:
    """The run's eval texts (row numbers from data_split.json) plus long and odd ones."""
    import csv

    rows = list(csv.DictReader((run_dir.parent.parent / "reviews.csv").open()))
    split = json.loads((run_dir / "data_split.json").read_text())
    texts = [rows[line - 2]["text"] for line in split["eval_rows"][:n]]
    return texts + ["", "Ünïcödé  ACCENTS and   spaces!", "very long " * 40]


def _reference_probs(package: Path, texts: list[str], batch_size: int) -> np.ndarray:
    """Reference: transformers' tokenizer + an ONNX Runtime session, the same batch
    compositions as the runtime uses (dynamic INT8 depends on the batch)."""
    from compress.data import TextDataset, encode, pad_batch
    from compress.models import load_tokenizer
    from compress.runtime import plan_batches
    from compress.sessions import ORTSession

    max_length = json.loads((package / "deploy.json").read_text())["max_sequence_length"]
    encoded = encode(load_tokenizer(package), TextDataset(texts, [0] * len(texts)), max_length)
    session = ORTSession(ONNXModel(package), threads=1)
    probs = np.empty((len(texts), 2))
    for idx in plan_batches([len(e["input_ids"]) for e in encoded], batch_size):
        logits = session.run(pad_batch([encoded[i] for i in idx], session.input_names, session.pad_id)).astype(float)
        probs[idx] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs


def test_package_directory_contents(run_dir, package):
    m = manifest(run_dir)
    assert m["status"] == "completed" and m["final_artifact"] == {"kind": "onnx", "path": "03-package"}
    for name in ("model.onnx", "tokenizer.json", "config.json", "README.md", "deploy.json",
                 "triton/tiny/config.pbtxt", "triton/tiny/1/triton_model.onnx", "triton/tiny/labels.txt"):
        assert (package / name).is_file(), name
    # the package's model is the ptq output, copied (not linked: editing it must not change the stage)
    ptq = run_dir / "02-ptq" / "model.onnx"
    assert (package / "model.onnx").read_bytes() == ptq.read_bytes()
    assert (package / "model.onnx").stat().st_ino != ptq.stat().st_ino
    record = stage_json(run_dir, "03-package")
    assert record["accuracy"] == stage_json(run_dir, "02-ptq")["accuracy"]  # same model, same eval split
    assert record["package"]["validated"][0]["label_agreement"] == 1.0


def test_each_stage_records_its_latency_against_its_input(run_dir):
    """stage.json says how each artifact's batch-1 p50 compares with the one it was built from."""
    chain = [("01-export_onnx", "input"), ("02-ptq", "01-export_onnx"), ("03-package", "02-ptq")]
    for name, built_from in chain:
        record = stage_json(run_dir, name)
        verdict = record["latency_vs_input"]
        assert verdict["input"] == built_from and verdict["p50_ms"] == record["latency"]["p50_ms"]
        assert verdict["slower"] == (not verdict["same_model"] and verdict["change"] > verdict["margin"])
    assert stage_json(run_dir, "03-package")["latency_vs_input"]["same_model"]
    assert "p50 vs input" in (run_dir / "03-package" / "README.md").read_text()


def test_deploy_json_matches_the_onnx_graph(package):
    import onnxruntime as ort

    from compress.files import file_sha256

    spec = json.loads((package / "deploy.json").read_text())
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_types = {"tensor(int64)": "int64", "tensor(float)": "float32"}
    for ours, theirs in ((spec["inputs"], session.get_inputs()), (spec["outputs"], session.get_outputs())):
        assert [(t["name"], t["dtype"], t["shape"]) for t in ours] == [
            (t.name, ort_types[t.type], list(t.shape)) for t in theirs]
    assert [t["name"] for t in spec["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert spec["outputs"][0]["shape"][1] == 2 and isinstance(spec["outputs"][0]["shape"][0], str)  # dynamic batch
    assert spec["labels"] == ["neg", "pos"] and spec["max_sequence_length"] == 32
    assert spec["precision"] == "int8 (dynamic activations)"
    on_disk = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
    assert set(spec["files"]) == on_disk - {"deploy.json", "stage.json"}
    assert all(file_sha256(package / f) == h for f, h in spec["files"].items())
    assert spec["validated"][0]["provider"] == "CPUExecutionProvider" and spec["validated"][0]["examples"] == 20


def test_fresh_process_with_only_the_runtime_predicts_like_onnxruntime(run_dir, package):
    texts = _eval_texts(run_dir)
    code = (
        "import json, sys, warnings; warnings.simplefilter('ignore')\n"
        "from compress.runtime import Predictor\n"
        f"p = Predictor.load({str(package)!r}, threads=1, batch_size=8)\n"
        "out = p.predict(json.loads(sys.stdin.read()))\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'nncf') if m in sys.modules]\n"
        "print(json.dumps({'out': out, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["heavy"] == []
    ref = _reference_probs(package, texts, batch_size=8)
    labels = ["neg", "pos"]
    assert [o["label"] for o in answer["out"]] == [labels[i] for i in ref.argmax(-1)]
    got = np.array([[o["scores"][name] for name in labels] for o in answer["out"]])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert all(o["score"] == max(o["scores"].values()) for o in answer["out"])


def test_model_card(run_dir, package, tmp_path):
    card = (package / "README.md").read_text()
    assert "## Stages applied" in card and "`export_onnx` (completed)" in card and "`ptq` (completed)" in card
    ledger = card.split("## Accuracy ledger")[1].split("##")[0]
    acc = stage_json(run_dir, "02-ptq")["accuracy"]
    assert "| 02-ptq | onnx | " + f"{acc:.4f}" in ledger and "03-package" not in ledger
    assert "## Benchmark" not in card  # no bench/results.md in this run
    assert '"onnxruntime"' in card and '"tokenizers"' in card  # environment

    from compress.context import RunContext
    from compress.stages.package.deploy import model_card

    # the benchmark reaches the card as the stage's input, never as a file it goes looking for
    run = RunContext(load_recipe(run_dir.parent.parent / "recipe.yaml"), run_dir)
    spec = json.loads((package / "deploy.json").read_text())
    table = "| target | p50 ms |\n|---|---|\n| ort-cpu | 1.23 |\n"
    with_bench = model_card(spec, run.stage_context(2, "package", tmp_path, benchmark_markdown=table), {})
    assert "## Benchmark" in with_bench and "| ort-cpu | 1.23 |" in with_bench


def test_validation_fails_against_a_different_model(run_dir, package):
    """The self-check can fail: the fp32 export is not the packaged INT8 model."""
    from compress.data import TextDataset, encode
    from compress.models import load_tokenizer
    from compress.stages.package.deploy import validate_package
    from compress.tasks import get_task

    texts = _eval_texts(run_dir)[:20]
    encoded = encode(load_tokenizer(package), TextDataset(texts, [0] * len(texts)), 32)
    task = get_task("text-classification")
    ok = validate_package(package, ONNXModel(package), task, texts, None, encoded, threads=1, atol=1e-5)
    assert ok["label_agreement"] == 1.0 and ok["max_abs_diff"] <= 1e-5
    with pytest.raises(StageError, match="package validation failed"):
        validate_package(package, ONNXModel(run_dir / "01-export_onnx"), task, texts, None, encoded, threads=1,
                         atol=1e-7)
    with pytest.raises(StageError, match="tokenizes eval example 0 differently"):
        shifted = [{**e, "input_ids": [*e["input_ids"][:-1], 1]} for e in encoded]
        validate_package(package, ONNXModel(package), task, texts, None, shifted, threads=1, atol=1e-5)


@pytest.mark.parametrize("stages, pattern", [
    ("\n  - kind: export_onnx\n  - kind: package\n  - kind: ptq\n",
     r"stages: stages\[1\] \(package\) must be the last stage \(stages\[2\] \(ptq\) follows it\)"),
    ("\n  - kind: export_onnx\n  - kind: package\n  - kind: package\n", r"stages\[1\] \(package\) must be the last"),
    ("\n  - kind: package\n", r"stages\[0\] \(package\) takes an ONNX model or a TensorRT engine but gets a torch"),
])
def test_package_must_be_last_and_take_onnx(recipe_dir, stages, pattern):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages=stages))
    with pytest.raises(RecipeError, match=pattern) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: ")


def test_engine_source_onnx_is_found_by_hash(tmp_path):
    from compress.artifacts import TRTEngine
    from compress.stages.package.deploy import engine_source_onnx

    for name in ("01-export_onnx", "02-ptq"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(name.encode())
    (tmp_path / "03-build_engine").mkdir()
    (tmp_path / "03-build_engine" / "engine.json").write_text(json.dumps({"onnx_sha256": "aaa"}))
    from compress.artifacts import ONNXModel
    from compress.manifest import StageEntry

    def earlier(first_sha: str):
        return [(StageEntry(name=name, kind=kind, status=status, path=name, artifact="onnx", artifact_sha256=sha),
                 ONNXModel(tmp_path / name))
                for name, kind, status, sha in (("01-export_onnx", "export_onnx", "completed", first_sha),
                                                ("02-ptq", "ptq", "reused", "bbb"))]

    engine = TRTEngine(tmp_path / "03-build_engine")
    assert engine_source_onnx(engine, earlier("aaa")).path == tmp_path / "01-export_onnx"
    with pytest.raises(StageError, match="cannot find the ONNX model this engine was built from"):
        engine_source_onnx(engine, earlier("ccc"))


def test_engine_input_ships_the_engine_and_its_onnx(tmp_path, tiny_classifier_dir):
    """A build_engine output (the engine bytes are opaque here: no GPU is needed to
    package one) gives a package with the engine, its metadata, the ONNX model it was
    built from, a TensorRT Triton repository and build_engine's parity in deploy.json."""
    from compress.artifacts import TRTEngine
    from compress.context import RunContext
    from compress.manifest import StageEntry
    from compress.stages import PackageStage

    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n")
    recipe = load_recipe(tmp_path / "recipe.yaml")
    run = RunContext(recipe, run_dir)
    engine_dir = run_dir / "02-build_engine"
    engine_dir.mkdir()
    (engine_dir / "model.engine").write_bytes(b"serialized engine")
    metadata = {"tensorrt": "10.9", "gpu": "Test GPU", "precision": "fp16",
                "profiles": [{"max_batch": 8}, {"max_batch": 64}],
                "onnx_sha256": run.manifest.stages[0].artifact_sha256}
    (engine_dir / "engine.json").write_text(json.dumps(metadata))
    parity = {"max_abs_diff": 0.004, "label_agreement": 1.0, "examples": 20}
    (engine_dir / "stage.json").write_text(json.dumps({"parity": parity}))
    run.manifest.stages.append(StageEntry(name="02-build_engine", kind="build_engine", status="completed",
                                          path="02-build_engine", artifact="trt", artifact_sha256="x"))
    out = tmp_path / "pkg"
    out.mkdir()
    ctx = run.stage_context(2, "package", out, read_input_record=lambda: {"parity": parity})
    produced = PackageStage(kind="package").run(TRTEngine(engine_dir), ctx)

    assert isinstance(produced, TRTEngine) and produced.path == out
    assert (out / "model.engine").read_bytes() == b"serialized engine"
    assert json.loads((out / "engine.json").read_text()) == metadata
    assert (out / "model.onnx").read_bytes() == (run_dir / "01-export_onnx" / "model.onnx").read_bytes()
    assert (out / "triton" / "tiny" / "1" / "model.plan").read_bytes() == b"serialized engine"
    config = (out / "triton" / "tiny" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "max_batch_size: 64" in config
    spec = json.loads((out / "deploy.json").read_text())
    assert spec["model"] == {"onnx": "model.onnx", "engine": "model.engine", "engine_metadata": "engine.json"}
    assert spec["precision"] == "fp16" and {"model.engine", "engine.json"} <= set(spec["files"])
    assert [v["runtime"] for v in spec["validated"]] == ["compress.runtime (onnxruntime)", "tensorrt 10.9"]
    assert spec["validated"][1]["provider"] == "Test GPU" and spec["validated"][1]["max_abs_diff"] == 0.004
