"""Never ship a slower artifact silently: the per-stage latency verdict against the stage's
input (pure functions on records and ledger rows), and validate's warning on S8S8 static PTQ
for a CPU target."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.latency_vs_input import (
    SLOWER_MARGIN,
    compare_latency,
    describe_slower,
    vs_input_cell,
)
from compress.report import ledger_warnings, md_table, summary_table
from tests.conftest import tiny_recipe_text
from tests.helpers import validate_warnings


def _row(stage: str, p50: float, vs_input: dict | None = None, artifact: str = "onnx") -> dict:
    row = {"stage": stage, "artifact": artifact, "accuracy": 0.8, "size_bytes": 1_000_000, "parameters": 1_000_000,
           "latency": {"p50_ms": p50, "threads": 2}}
    return row | ({"latency_vs_input": vs_input} if vs_input else {})


def test_slower_only_beyond_the_margin():
    lat = lambda ms: {"p50_ms": ms}  # noqa: E731
    s8s8 = compare_latency(lat(23.3), lat(20.8), "03-optimize_onnx")  # the measured S8S8 case: +12 %
    assert s8s8["slower"] and s8s8["change"] == pytest.approx(0.1202, abs=1e-4) and s8s8["input"] == "03-optimize_onnx"
    within = compare_latency(lat(20.8 * (1 + SLOWER_MARGIN) - 0.01), lat(20.8), "x")
    assert not within["slower"] and within["change"] > 0
    assert not compare_latency(lat(5.0), lat(20.8), "x")["slower"]
    # the same model (package): a change is drift, never a slower artifact
    same = compare_latency(lat(30.0), lat(20.8), "04-ptq", same_model=True)
    assert same["same_model"] and not same["slower"]
    assert compare_latency(None, lat(20.8), "x") is None and compare_latency(lat(1.0), {}, "input") is None


def test_the_first_stage_is_compared_with_the_recipes_input_model_by_that_name():
    lat = lambda ms: {"p50_ms": ms}  # noqa: E731
    first = describe_slower("01-export_onnx", "onnx", compare_latency(lat(79.9), lat(57.63), "input"))
    assert "slower than the recipe's input model at batch-1 p50 (79.90 vs 57.63 ms, +39%" in first
    later = describe_slower("04-ptq", "onnx", compare_latency(lat(23.3), lat(20.8), "03-optimize_onnx"))
    assert "slower than its input 03-optimize_onnx at" in later


def test_ledger_marks_the_slower_stage():
    fused = _row("03-optimize_onnx", 20.8, compare_latency({"p50_ms": 20.8}, {"p50_ms": 30.0}, "02-export_onnx"))
    ptq = _row("04-ptq", 23.3, compare_latency({"p50_ms": 23.3}, {"p50_ms": 20.8}, "03-optimize_onnx"))
    package = _row("05-package", 25.0, compare_latency({"p50_ms": 25.0}, {"p50_ms": 23.3}, "04-ptq", same_model=True))
    rows = [_row("02-export_onnx", 30.0), fused, ptq, package]
    header, body = summary_table(rows)
    assert header[-1] == "p50 vs input"
    assert [line[-1] for line in body] == ["-", "-31%", "+12% SLOWER", "same model"]
    assert [vs_input_cell(r) for r in rows] == [line[-1] for line in body]
    warnings = ledger_warnings(rows)
    assert len(warnings) == 1 and warnings[0].startswith("04-ptq: its onnx artifact is slower than its input "
                                                         "03-optimize_onnx at batch-1 p50 (23.30 vs 20.80 ms, +12%")
    assert "| 04-ptq | onnx |" in md_table(header, body)


def test_ledger_of_a_run_without_verdicts_keeps_its_columns():
    """Runs recorded before the verdict existed (the committed results) render as before."""
    header, body = summary_table([_row("01-export_onnx", 3.0), {"stage": "02-ptq", "status": "failed"}])
    assert "p50 vs input" not in header and all(len(line) == len(header) for line in body)
    assert ledger_warnings([_row("01-export_onnx", 3.0)]) == []


STATIC_PTQ = "\n  - kind: export_onnx\n  - kind: ptq\n    mode: static\n"


@pytest.mark.parametrize("extra, warned", [
    ("", True),  # int8 is the default
    ("    activation_type: int8\n", True),
    ("    activation_type: uint8\n", False),
    ("  - kind: build_engine\n", False),  # TensorRT takes the symmetric int8 graph
])
def test_validate_warns_on_s8s8_static_ptq_for_cpu(recipe_dir, extra, warned):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages=STATIC_PTQ + extra))
    warning = validate_warnings(path)
    assert len(warning) == int(warned), warning
    if not warned:
        return
    assert warning[0].startswith(f"warning: {path}: stages[1].activation_type: int8")
    assert ("(the default)" in warning[0]) == (extra == "")
    assert "23.3 vs 20.8 ms" in warning[0] and "activation_type: uint8" in warning[0]


def test_validate_warns_on_hqq_weights_for_cpu():
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "causal_lm" / "int4-hqq.yaml"
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "stages[1].method: hqq" in warning[0] and "5.3 tokens/s" in warning[0], result.output
    shipped = CliRunner().invoke(app, ["validate", str(path.parents[2] / "recipes" / "causal-lm.yaml")])
    assert shipped.exit_code == 0 and "warning:" not in shipped.output, shipped.output
