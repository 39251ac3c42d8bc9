"""`repeats`: every cell measured N times in interleaved rounds (each in its own process),
accuracy only in the first; a row is the median of its repeats, with each repeat's p50
and their spread. The subprocess is replaced by a recorder here: what is tested is the
scheduling and the combining, not the timing."""

from __future__ import annotations

import json

import pytest

from compress.artifacts import ONNXModel
from compress.bench import runner
from compress.bench.plan import BenchModel, Cell, Plan
from compress.bench.report import markdown_table
from compress.bench.runner import combine_repeats, run_plan
from compress.bench.settings import BenchSettings


def ok(p50: float, **extra) -> dict:
    return {"status": "ok", "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "mean_ms": p50 * 1.1,
            "cv": 0.1, "throughput": 1000 / p50, "iterations": 10, "size_bytes": 1e6} | extra


def test_combine_takes_medians_and_records_each_repeat():
    row = combine_repeats([ok(3.0, accuracy=0.8), ok(2.0), ok(10.0)])
    assert row["p50_ms"] == 3.0 and row["p99_ms"] == 4.5 and row["throughput"] == pytest.approx(1000 / 3, abs=1e-3)
    assert row["accuracy"] == 0.8  # from the first repeat, the one that measured it
    assert row["iterations"] == 30
    assert row["repeats"] == {"n": 3, "failed": 0, "p50_ms": [3.0, 2.0, 10.0], "spread": round(8 / 3, 4)}


def test_combine_takes_the_median_paired_speedup_and_its_spread():
    row = combine_repeats([ok(3.0, paired_speedup=2.0), ok(2.0, paired_speedup=2.2), ok(10.0, paired_speedup=2.1)])
    assert row["paired_speedup"] == 2.1
    assert row["repeats"]["paired_speedup"] == [2.0, 2.2, 2.1]
    assert row["repeats"]["paired_spread"] == round(0.2 / 2.1, 4)


def test_combine_skips_failed_repeats_and_keeps_a_lone_failure():
    failed = {"status": "failed", "reason": "cell timed out after 5 s"}
    row = combine_repeats([failed, ok(2.0), ok(4.0)])
    assert row["status"] == "ok" and row["p50_ms"] == 3.0 and row["repeats"]["failed"] == 1
    assert combine_repeats([failed, failed]) == failed
    assert combine_repeats([ok(2.0)]) == ok(2.0)  # one repeat: the row as measured, no repeats field


def test_rounds_interleave_models_and_accuracy_runs_once(tmp_path, monkeypatch):
    calls = []

    def fake_run_cell(cell, settings, work):
        calls.append((cell.model.name, cell.accuracy))
        return ok(1.0 + len(calls), **({"accuracy": 0.9} if cell.accuracy else {}))

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "fingerprint", lambda: {"processor": "test"})
    models = [BenchModel(name, ONNXModel(tmp_path / name)) for name in ("a", "b")]
    cells = [Cell(m, "ort-cpu", 1, None, 1, accuracy=True) for m in models]
    cells.append(Cell(models[0], "ort-cuda", None, None, None, skipped="no CUDA here"))
    rows = run_plan(Plan(cells, models), BenchSettings(repeats=3), tmp_path / "out")

    assert calls == [("a", True), ("b", True), ("a", False), ("b", False), ("a", False), ("b", False)]
    assert [(r["model"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("a", "skipped")]
    assert rows[0]["repeats"]["p50_ms"] == [2.0, 4.0, 6.0] and rows[0]["p50_ms"] == 4.0
    assert rows[1]["accuracy"] == 0.9
    written = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in written] == ["a", "b", "a"]
    each = [json.loads(line) for line in (tmp_path / "out" / "repeats.jsonl").read_text().splitlines()]
    assert [(r["model"], r["repeat"]) for r in each] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert "Each cell measured 3 times in interleaved rounds" in markdown_table(rows)


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        BenchSettings(repeats=0)
