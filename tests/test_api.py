"""The Python API (compress.run / benchmark / load): typed results that match what the run
and the benchmark wrote, the CLI's one-line errors, and a light `import compress`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import compress
from compress.api import BenchResult, RunResult, StageResult
from compress.errors import RecipeError
from compress.runtime import Predictor
from tests.conftest import make_sentences, tiny_recipe_text, write_csv

STAGES = "\n  - kind: export_onnx\n  - kind: ptq\n  - kind: package\n"


@pytest.fixture(scope="module")
def result(tmp_path_factory, tiny_classifier_dir) -> RunResult:
    tmp = tmp_path_factory.mktemp("api")
    shutil.copytree(tiny_classifier_dir, tmp / "model")
    write_csv(tmp / "reviews.csv", make_sentences(80))
    (tmp / "recipe.yaml").write_text(tiny_recipe_text(stages=STAGES))
    return compress.run(tmp / "recipe.yaml", out=tmp / "runs")


def test_run_returns_the_runs_stages_and_package(result):
    assert isinstance(result, RunResult) and result.status == "completed"
    assert result.name == "tiny" and result.task == "text-classification" and result.metric == "accuracy"
    assert [s.name for s in result.stages] == ["01-export_onnx", "02-ptq", "03-package"]
    assert all(isinstance(s, StageResult) and s.status == "completed" for s in result.stages)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [s.metrics for s in result.stages] == [e["metrics"] for e in manifest["stages"]]
    assert result.package == result.run_dir / "03-package" and (result.package / "deploy.json").is_file()
    assert result.final_artifact == result.run_dir / manifest["final_artifact"]["path"]
    assert "02-ptq" in result.summary


def test_stages_by_number_name_or_kind(result):
    assert result.stage("ptq") is result.stage(2) is result.stage("02-ptq") is result.stages[1]
    assert 0 <= result.stage("ptq").metrics["accuracy"] <= 1
    assert result.stage("ptq").record["int8_coverage"]  # stage.json, through the result
    with pytest.raises(KeyError, match="no stage 'qat'"):
        result.stage("qat")


def test_a_rerun_reuses_and_read_gives_the_same_result(result):
    again = compress.run(result.run_dir.parent.parent / "recipe.yaml", out=result.run_dir.parent)
    assert [s.status for s in again.stages] == ["reused"] * 3
    assert [s.metrics for s in again.stages] == [s.metrics for s in result.stages]
    assert RunResult.read(result.run_dir) == again


def test_load_gives_a_predictor_that_predicts(result):
    predictor = compress.load(result.package, threads=1)
    assert isinstance(predictor, Predictor)
    out = predictor.predict(["a good film", "boring"])
    assert [r["label"] in ("neg", "pos") for r in out] == [True, True]


def test_benchmark_returns_the_rows_it_wrote(result, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: api
models:
  - {result.stage('ptq').path / 'model.onnx'}
targets: [ort-cpu]
shapes: {{batch_sizes: [1], seq_lens: [8], real: false}}
threads: [1]
warmup: 0
min_iterations: 2
min_seconds: 0
""")
    seen = []
    bench = compress.benchmark(spec, out=tmp_path / "out", on_row=seen.append)
    assert isinstance(bench, BenchResult) and bench.out_dir == tmp_path / "out"
    written = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert list(bench.rows) == written == seen
    assert [(r["target"], r["shape"], r["status"]) for r in bench.rows] == [("ort-cpu", "b1x8", "ok")]
    assert bench.failed == () and "| model |" in bench.table


def test_errors_are_the_clis_one_line_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nmodel: m\ntask: text-classification\nstages: []\n")
    with pytest.raises(RecipeError) as info:
        compress.run(recipe, out=tmp_path / "runs")
    assert str(info.value).startswith(f"{recipe}: ") and "\n" not in str(info.value)


def test_import_compress_stays_light():
    code = ("import sys, compress; f = compress.load; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'pydantic', 'yaml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
