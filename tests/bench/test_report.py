"""results.jsonl → CSV, Markdown, Pareto plot; speedups computed from the rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from compress.bench.report import (
    CSV_COLUMNS,
    markdown_table,
    pareto_front,
    read_rows,
    with_speedups,
    write_reports,
)
from compress.bench.runner import append_row


def row(model, target, p50, role=None, shape="b1xreal", accuracy=None, status="ok", reason=None, size=1_000_000):
    r = {"model": model, "group": "run", "role": role, "kind": "torch" if target.startswith("torch") else "onnx",
         "target": target, "shape": shape, "batch_size": 1, "seq_len": "real", "threads": 2, "status": status,
         "env": {"processor": "Test CPU", "cores_usable": 2, "packages": {"torch": "x"}, "git_commit": "abc",
                 "load_avg_at_start": [0.5, 0.5, 0.5]}}
    if status == "ok":
        r |= {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.5, "mean_ms": p50, "cv": 0.05,
              "throughput": 1000 / p50, "iterations": 20, "size_bytes": size, "peak_rss_mb": 300.0}
        if accuracy is not None:
            r |= {"accuracy": accuracy, "examples": 100}
    else:
        r["reason"] = reason
    return r


@pytest.fixture
def rows():
    return [
        row("run/01-finetune", "torch-cpu", 12.0, role="baseline", accuracy=0.80, size=90_000_000),
        row("run/02-export_onnx", "ort-cpu", 6.0, role="ort_fp32", accuracy=0.80, size=90_000_000),
        row("run/04-ptq", "ort-cpu", 2.0, accuracy=0.81, size=23_000_000),
        row("run/01-finetune", "torch-cpu", 40.0, role="baseline", shape="b1x128"),
        row("run/04-ptq", "ort-cpu", 10.0, shape="b1x128"),
        row("run/01-finetune", "torch-cuda", None, shape="-", status="skipped", reason="no CUDA GPU is visible"),
    ]


def test_speedups_are_ratios_of_p50_at_the_same_shape(rows):
    by = {(r["model"], r["target"], r["shape"]): r for r in with_speedups(rows)}
    assert by[("run/04-ptq", "ort-cpu", "b1xreal")]["speedup_vs_baseline"] == 6.0
    assert by[("run/04-ptq", "ort-cpu", "b1xreal")]["speedup_vs_ort_fp32"] == 3.0
    assert by[("run/04-ptq", "ort-cpu", "b1x128")]["speedup_vs_baseline"] == 4.0
    assert by[("run/04-ptq", "ort-cpu", "b1x128")]["speedup_vs_ort_fp32"] is None  # ORT fp32 not measured there
    assert by[("run/01-finetune", "torch-cpu", "b1xreal")]["speedup_vs_baseline"] == 1.0
    assert "speedup_vs_baseline" not in by[("run/01-finetune", "torch-cuda", "-")]


def test_markdown_rows_are_models_columns_are_targets(rows):
    md = markdown_table(rows)
    assert "### b1 × real (2 threads)" in md and "### b1 × 128 (2 threads)" in md
    assert "| model | torch-cpu | ort-cpu |" in md  # torch-cuda never ran: no column, listed under skipped
    ptq = next(line for line in md.splitlines() if line.startswith("| run/04-ptq |"))
    assert ptq == "| run/04-ptq |  | 2.00 / 3.00 ms · 500.0/s · acc 0.8100 · 23.0 MB · 6.00x torch, 3.00x ort |"
    assert "- torch-cuda: no CUDA GPU is visible" in md
    assert "Test CPU" in md and "load average at start [0.5, 0.5, 0.5]" in md


def test_csv_has_fixed_columns_and_accuracy_per_model_and_target(rows, tmp_path):
    write_reports(rows, tmp_path)
    with (tmp_path / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        got = list(reader)
    assert len(got) == len(rows)
    ptq128 = next(r for r in got if r["model"] == "run/04-ptq" and r["shape"] == "b1x128")
    assert ptq128["metric"] == "accuracy" and ptq128["metric_value"] == "0.81"
    assert ptq128["speedup_vs_baseline"] == "4.0"
    skipped = next(r for r in got if r["status"] == "skipped")
    assert skipped["p50_ms"] == "" and skipped["reason"] == "no CUDA GPU is visible"


def test_plot_is_a_png(rows, tmp_path):
    paths = write_reports(rows, tmp_path)
    data = paths["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_pareto_front_drops_dominated_points():
    pts = [(2.0, 0.81), (6.0, 0.80), (12.0, 0.80), (3.0, 0.85), (1.0, 0.70)]
    assert pareto_front(pts) == [(1.0, 0.70), (2.0, 0.81), (3.0, 0.85)]


def test_read_rows_ignores_a_torn_last_line(rows, tmp_path):
    path = tmp_path / "results.jsonl"
    for r in rows[:2]:
        append_row(path, r)
    with path.open("a") as f:
        f.write(json.dumps(rows[2])[:40])  # killed mid-write
    assert [r["model"] for r in read_rows(path)] == ["run/01-finetune", "run/02-export_onnx"]


def test_environment_names_the_vector_instruction_sets():
    """INT8 kernels (and dynamic quantization's exact outputs) depend on AVX-512 / VNNI: a
    fingerprint that says only 'AMD EPYC' cannot tell two such machines apart."""
    from compress.bench.report import environment_line
    from compress.environment import VECTOR_FLAGS, environment

    sets = environment()["instruction_sets"]
    assert sets is None or set(sets) <= set(VECTOR_FLAGS)
    row = {"status": "ok", "env": {"processor": "CPU X", "instruction_sets": ["avx2", "avx512_vnni"]}}
    assert environment_line([row]).startswith("Environment: CPU X (avx2, avx512_vnni), ")
    assert environment_line([{"status": "ok", "env": {"processor": "CPU X"}}]).startswith("Environment: CPU X, ")


def _model(name, group, role=None, sha=None, takes=None):
    from compress.artifacts import ONNXModel, TorchModel
    from compress.bench.plan import BenchModel

    cls = ONNXModel if takes or name.endswith("onnx") else TorchModel
    return BenchModel(name, cls(Path("/nonexistent") / name), group, role, artifact_sha256=sha, input_sha256=takes)


def test_the_ort_reference_is_the_baseline_models_own_export():
    """distill-prune: the run's only export is the pruned student's, so the teacher's speedup
    'vs ORT fp32' is against the teacher's export from another run, found by the sha256 of
    what it exported; never against the student's export (0.17x ort, before)."""
    from compress.bench.plan import ORT_FP32, assign_references

    models = [_model("dp/01-finetune", "dp", "baseline", sha="teacher"), _model("dp/03-prune", "dp", sha="pruned"),
              _model("dp/04-export_onnx", "dp", sha="student-onnx", takes="pruned"),
              _model("t/01-export_onnx", "t", sha="teacher-onnx", takes="teacher")]
    named = {m.name: m for m in assign_references(models, None)}
    assert {m.ort_ref for m in named.values() if m.group == "dp"} == {"t/01-export_onnx"}
    assert named["t/01-export_onnx"].role == ORT_FP32 and named["dp/04-export_onnx"].role is None
    assert named["dp/03-prune"].baseline_ref == "dp/01-finetune"
    without = {m.name: m for m in assign_references(models[:3], None)}
    assert without["dp/01-finetune"].ort_ref is None  # no export of the teacher: no ORT column, not a wrong one
    chosen = {m.name: m for m in assign_references(models, "dp/04-export_onnx")}  # the spec's ort_baseline
    assert {m.ort_ref for m in chosen.values()} == {"dp/04-export_onnx"}


def test_rows_name_their_references_and_a_dirty_tree_is_marked(rows):
    from compress.bench.report import markdown_table, with_speedups

    named = [dict(r, baseline_reference=None, ort_fp32_reference=None) for r in rows]
    assert all(r.get("speedup_vs_ort_fp32") is None for r in with_speedups(named))
    dirty = [dict(r, env={**(r.get("env") or {}), "git_commit": "abc-dirty", "git_dirty": True}) for r in rows]
    table = markdown_table(dirty)
    assert table.startswith("**dirty**: measured from a working tree with uncommitted changes")
    assert "git abc-dirty (**dirty**)" in table
