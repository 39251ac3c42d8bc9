"""End to end on the tiny model: a recipe with a `benchmark:` block (run before its final
package stage) runs its cells in subprocesses (torch-cpu, ort-cpu), skips what cannot
run here with the reason, and writes the four result files; `compress bench` and `compress table` on the same run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from tests.conftest import make_sentences, tiny_recipe_text, write_csv

runner = CliRunner()

BENCH_BLOCK = """
benchmark:
  targets: [torch-cpu, ort-cpu, ort-trt]
  shapes: {batch_sizes: [1], real: true}
  threads: [1]
  warmup: 1
  min_iterations: 3
  min_seconds: 0
"""


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_base_dir):
    tmp = tmp_path_factory.mktemp("bench-run")
    shutil.copytree(tiny_base_dir, tmp / "model")
    write_csv(tmp / "reviews.csv", make_sentences(80))
    stages = "\n  - kind: finetune\n    epochs: 1\n    batch_size: 8\n  - kind: export_onnx\n  - kind: ptq\n  - kind: package\n"
    (tmp / "recipe.yaml").write_text(tiny_recipe_text(stages=stages) + BENCH_BLOCK)
    ctx = run_recipe(load_recipe(tmp / "recipe.yaml"), tmp / "runs", recipe_path=tmp / "recipe.yaml")
    return ctx.run_dir


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recipe_benchmark_block_writes_the_four_files(bench_run):
    bench = bench_run / "bench"
    assert sorted(p.name for p in bench.iterdir()) == ["pareto.png", "results.csv", "results.jsonl", "results.md"]


def test_benchmark_runs_before_package_so_the_model_card_holds_its_table(bench_run):
    card = (bench_run / "04-package" / "README.md").read_text(encoding="utf-8")
    table = (bench_run / "bench" / "results.md").read_text(encoding="utf-8").strip()
    assert "## Benchmark" in card and table in card
    measured = {json.loads(line)["model"].split("/")[-1] for line in (bench_run / "bench" / "results.jsonl").open()}
    assert "04-package" not in measured  # the package holds the ptq model: not measured twice


def test_a_runs_package_stage_is_not_measured_again(bench_run):
    from compress.bench.plan import resolve_models
    from compress.bench.spec import BenchSpec

    models = resolve_models(BenchSpec(models=[str(bench_run)]))
    assert [m.name.split("/")[-1] for m in models] == ["01-finetune", "02-export_onnx", "03-ptq"]


def test_cells_measured_in_subprocesses_with_numbers_and_fingerprint(bench_run):
    rows = rows_of(bench_run / "bench" / "results.jsonl")
    ok = [r for r in rows if r["status"] == "ok"]
    # 3 models: finetune on torch-cpu; export_onnx and ptq on ort-cpu
    assert sorted((r["model"].split("/")[-1], r["target"], r["shape"]) for r in ok) == [
        ("01-finetune", "torch-cpu", "b1xreal"), ("02-export_onnx", "ort-cpu", "b1xreal"), ("03-ptq", "ort-cpu", "b1xreal"),
    ]
    for r in ok:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["iterations"] >= 3 and r["throughput"] > 0 and r["cv"] >= 0
        assert r["peak_rss_mb"] > 50 and r["size_bytes"] > 0
        assert r["threads"] == 1 and r["runtime_threads"]["OMP_NUM_THREADS"] == "1"
        assert r["env"]["processor"] and r["env"]["packages"]["onnxruntime"] and "git_commit" in r["env"]
    torch_rows = [r for r in ok if r["target"] == "torch-cpu"]
    assert all(r["runtime_threads"]["torch"] == 1 for r in torch_rows)
    # accuracy once per model and target, on the run's own eval split (20 of 80 rows)
    acc = [r for r in ok if "accuracy" in r]
    assert len(acc) == 3 and all(r["examples"] == 20 and r["shape"] == "b1xreal" for r in acc)
    roles = {r["model"].split("/")[-1]: r["role"] for r in ok}
    assert roles == {"01-finetune": "baseline", "02-export_onnx": "ort_fp32", "03-ptq": None}
    assert sorted(r["path"] for r in ok) == ["01-finetune", "02-export_onnx", "03-ptq"]  # relative to the run
    manifest = json.loads((bench_run / "manifest.json").read_text())
    recorded = {s["path"]: s["artifact_sha256"] for s in manifest["stages"] if s.get("path")}
    for r in ok:  # the artifact measured is the one the run recorded, by content
        assert r["artifact_sha256"] == recorded[r["path"]]
        assert r["baseline_reference"].endswith("01-finetune") and r["ort_fp32_reference"].endswith("02-export_onnx")
        env = r["env"]
        assert env["command"] and "family" in env["cpu"] and isinstance(env["instruction_sets"], list)
        assert env["git_dirty"] in (True, False, None) and manifest["environment"]["git_commit"] == env["git_commit"]


def test_accuracy_cells_keep_predictions_and_results_md_compares_them(bench_run):
    """Each accuracy cell records every eval example's prediction with its label, so results.md
    compares each model with its fp32 reference example by example."""
    from compress.bench.compare import compare_predictions

    rows = {r["model"].split("/")[-1]: r for r in rows_of(bench_run / "bench" / "results.jsonl") if "accuracy" in r}
    for r in rows.values():
        assert len(r["predictions"]) == len(r["references"]) == 20
        assert sum(p == t for p, t in zip(r["predictions"], r["references"])) / 20 == pytest.approx(r["accuracy"])
    # the export computes the fine-tuned model's function: the same label on every example
    assert compare_predictions(rows["01-finetune"], rows["02-export_onnx"])["agreement"] == 1.0
    md = (bench_run / "bench" / "results.md").read_text()
    assert "### Predictions against the fp32 reference" in md
    section = md.split("### Predictions against the fp32 reference")[1]
    compared = {ln.split(" | ")[0].split("/")[-1]: ln for ln in section.splitlines() if ln.startswith("| tiny/0")}
    assert set(compared) == {"02-export_onnx", "03-ptq"}
    assert "| tiny/01-finetune | 1.0000 | +0 | 0 / 0 | 1.000 |" in compared["02-export_onnx"]


def test_unavailable_target_is_a_skipped_row_with_reason(bench_run):
    from compress.bench.targets import unavailable_reason

    reason = unavailable_reason("ort-trt")
    if reason is None:
        pytest.skip("ort-trt runs on this machine")
    rows = rows_of(bench_run / "bench" / "results.jsonl")
    skipped = [r for r in rows if r["target"] == "ort-trt"]
    assert len(skipped) == 2  # one per ONNX model
    for r in skipped:
        assert r["status"] == "skipped" and r["reason"] == reason
        assert "p50_ms" not in r and "accuracy" not in r
    assert f"- ort-trt: {reason}" in (bench_run / "bench" / "results.md").read_text()


def test_markdown_from_a_real_run(bench_run):
    md = (bench_run / "bench" / "results.md").read_text()
    assert "| model | torch-cpu | ort-cpu |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| tiny/01-finetune |"))
    assert "1.00x torch" in line  # the baseline against itself


def test_table_rerenders_the_same_files(bench_run, tmp_path):
    bench = bench_run / "bench"
    result = runner.invoke(app, ["table", str(bench / "results.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.md").read_text() == (bench / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text() == (bench / "results.csv").read_text()
    assert (tmp_path / "pareto.png").stat().st_size > 5000
    assert "| model | torch-cpu | ort-cpu |" in result.output


def eval_data(bench_run) -> str:
    """A spec's data block: the tiny run's CSV, a quarter held out."""
    return (f"data:\n  train: {bench_run.parent.parent / 'reviews.csv'}\n  eval_fraction: 0.25\n"
            "  seed: 7\n  max_length: 32\n")


def test_bench_command_on_single_artifacts(bench_run, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: single
models:
  - {bench_run / '03-ptq' / 'model.onnx'}
baseline: {bench_run / '01-finetune'}
{eval_data(bench_run)}targets: [ort-cpu]
shapes: {{batch_sizes: [2], seq_lens: [16], real: false}}
threads: [1]
warmup: 0
min_iterations: 2
min_seconds: 0
""")
    result = runner.invoke(app, ["bench", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = rows_of(tmp_path / "out" / "results.jsonl")
    assert [(r["model"], r["target"], r["role"], r["status"]) for r in rows] == [
        ("01-finetune", "torch-cpu", "baseline", "ok"),  # the explicit baseline, on torch-cpu though not a spec target
        ("03-ptq/model.onnx", "ort-cpu", None, "ok"),
    ]
    assert rows[1]["shape"] == "b2x16" and rows[1]["mean_real_tokens_per_item"] == 16
    assert rows[1]["examples"] == 20 and 0 <= rows[1]["accuracy"] <= 1  # fixed shapes; accuracy still on the eval set
    # paths relative to the spec's directory: committed results name no directory of this machine
    assert not Path(rows[1]["path"]).is_absolute()
    assert (spec.parent / rows[1]["path"]).resolve() == (bench_run / "03-ptq").resolve()


def test_paired_cells_time_each_model_against_the_ort_reference_in_one_process(bench_run, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: paired
models:
  - {bench_run / '03-ptq'}
ort_baseline: {bench_run / '02-export_onnx'}
{eval_data(bench_run)}targets: [ort-cpu]
shapes: {{batch_sizes: [4], real: true}}
threads: [1]
warmup: 1
min_iterations: 3
min_seconds: 0
accuracy: false
paired: true
""")
    result = runner.invoke(app, ["bench", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in rows_of(tmp_path / "out" / "results.jsonl")}
    ptq, reference = rows["03-ptq"], rows["02-export_onnx"]
    assert reference["role"] == "ort_fp32" and "paired_speedup" not in reference  # not paired with itself
    assert ptq["paired_blocks"] >= 3 and ptq["paired_calls_per_block"] >= 1
    assert 0.05 < ptq["paired_speedup"] < 20  # a ratio of two real timings of the same inputs
    assert "x ort paired" in (tmp_path / "out" / "results.md").read_text()


def test_run_from_a_fine_tuned_model_benchmarks_that_model_as_baseline(tmp_path, tiny_classifier_dir):
    """No finetune stage (PTQ only, as in the headline recipe): the input classifier is the
    uncompressed baseline on torch-cpu, with accuracy on the run's eval split."""
    shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    write_csv(tmp_path / "reviews.csv", make_sentences(40))
    stages = "\n  - kind: export_onnx\n  - kind: ptq\n"
    block = BENCH_BLOCK.replace("[torch-cpu, ort-cpu, ort-trt]", "[torch-cpu, ort-cpu]")
    (tmp_path / "recipe.yaml").write_text(tiny_recipe_text(stages=stages) + block)
    ctx = run_recipe(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "runs", recipe_path=tmp_path / "recipe.yaml")
    rows = [r for r in rows_of(ctx.run_dir / "bench" / "results.jsonl") if r["status"] == "ok"]
    assert [(r["model"].split("/")[-1], r["target"], r["role"]) for r in rows] == [
        ("model", "torch-cpu", "baseline"), ("01-export_onnx", "ort-cpu", "ort_fp32"), ("02-ptq", "ort-cpu", None)]
    # the run's export is the input model's own export: found by the input's sha256
    assert {r["ort_fp32_reference"] for r in rows} == {rows[1]["model"]}
    assert rows[0]["examples"] == 10 and 0 <= rows[0]["accuracy"] <= 1
    md = (ctx.run_dir / "bench" / "results.md").read_text()
    baseline_row = [ln for ln in md.splitlines() if ln.startswith("| model |")][1]  # [0] is the header
    assert "1.00x torch" in baseline_row


@pytest.mark.parametrize("bench", ["plan", "generation"])
def test_the_fingerprint_is_taken_before_committed_results_are_rewritten(tmp_path, monkeypatch, bench):
    """Rerunning a bench into its committed results directory rewrites tracked files: a git
    state taken after that would call every rerun 'dirty'. The fingerprint comes first."""
    import compress.bench.runner as runner
    from compress.bench.generation import run_generation_bench
    from compress.bench.plan import Plan
    from compress.bench.settings import BenchSettings

    out = tmp_path / "results"
    out.mkdir()
    (out / "results.jsonl").write_text('{"committed": true}\n')
    seen = []

    def fingerprint():
        seen.append((out / "results.jsonl").read_text())
        return {"git_commit": "abc", "git_dirty": False}

    monkeypatch.setattr(runner, "fingerprint", fingerprint)
    if bench == "plan":
        runner.run_plan(Plan(cells=[], models=[]), BenchSettings(), out)
    else:
        run_generation_bench([], out)
    assert seen == ['{"committed": true}\n']
    assert (out / "results.jsonl").read_text() == ""  # then the new run starts its own file
