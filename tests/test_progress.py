"""Progress bars (compress/progress.py): drawn on one console, nested inside another bar,
off under --quiet and on other local ranks; and the long steps advance them as they
work: one step per calibration batch, per benchmark cell run, per layer of the
sensitivity search."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from compress import progress
from compress.artifacts import ONNXModel, TorchModel
from compress.bench import runner
from compress.bench.plan import BenchModel, Cell, Plan
from compress.bench.settings import BenchSettings
from compress.cli import app
from tests.conftest import tiny_recipe_text


def terminal() -> Console:
    """A console that draws bars as on a terminal, into a buffer."""
    return Console(file=io.StringIO(), force_terminal=True, width=120, record=True)


@pytest.fixture
def bars(monkeypatch) -> Console:
    """Bars shown on a recording terminal console; the settings are restored afterwards
    (a CLI test's --quiet would otherwise carry over)."""
    monkeypatch.setenv("TERM", "xterm")  # rich draws nothing on a dumb terminal
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    console = terminal()
    monkeypatch.setattr(progress, "_console", console)
    monkeypatch.setattr(progress, "_enabled", True)
    return console


@pytest.fixture
def advances(bars, monkeypatch) -> list[str]:
    """The description of every bar at each of its advances (one entry per step)."""
    log: list[str] = []
    real = progress.Bar.advance

    def advance(self, steps=1):
        log.extend([self.description] * steps)
        real(self, steps)

    monkeypatch.setattr(progress.Bar, "advance", advance)
    return log


def test_a_bar_counts_to_its_total_and_nests_inside_a_kept_bar(bars):
    with progress.make_progress(transient=False) as outer:
        task = outer.add_task("train", total=2)
        for _ in range(2):
            with progress.progress_bar("evaluating", total=3) as bar:  # nested: same console, one display
                for _ in range(3):
                    bar.advance()
            outer.advance(task)
    with progress.progress_bar("export_onnx: parity", total=4) as bar:
        bar.advance(4)
    with progress.spinner("optimize_onnx: fusing") as bar:
        bar.describe("optimize_onnx: saving")
    text = bars.export_text()
    assert "train" in text and "2/2" in text  # the kept bar's last frame
    assert "export_onnx: parity" in text and "4/4" in text  # a transient bar's last frame before it is erased
    assert "optimize_onnx: saving" in text


@pytest.mark.parametrize("quiet, local_rank", [(True, "0"), (False, "1")])
def test_quiet_and_other_local_ranks_draw_nothing(bars, monkeypatch, quiet, local_rank):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    progress.configure(bars, enabled=not quiet)
    with progress.progress_bar("ptq: calibration", total=2) as bar:
        bar.advance(2)  # still callable: the step's code does not care whether bars show
    assert bars.export_text() == ""


def test_off_a_terminal_a_step_bar_writes_nothing_not_even_a_blank_line(bars, monkeypatch):
    log_file = Console(file=io.StringIO(), force_terminal=False)
    progress.configure(log_file)
    with progress.progress_bar("evaluating", total=2) as bar:
        bar.advance(2)
    assert log_file.file.getvalue() == ""


def test_the_cli_quiet_flag_turns_bars_off(bars, recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text())
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not progress.bars_shown()


# ---------------------------------------------------------------------------- calibration


def test_feed_reader_reports_each_batch_once_it_has_run_and_feeds_the_same_batches():
    from compress.stages.ptq.ort_quantize import FeedReader

    feeds = [{"input_ids": np.full((1, 4), i)} for i in range(3)]
    done: list[int] = []
    reader = FeedReader(feeds, lambda: done.append(reader.position))
    handed = []
    while (feed := reader.get_next()) is not None:
        handed.append(feed)
    assert reader.get_next() is None  # asked again after the end: nothing more counted
    assert handed == feeds  # the callback does not change what the calibrator sees
    assert done == [1, 2, 3]  # batch k counted when batch k+1 (or the end) is asked for


def test_calibration_bar_advances_once_per_batch_and_only_when_calibrating(
        bars, advances, tmp_path, tiny_classifier_dir):
    from compress.models import load_tokenizer
    from compress.onnx_graph import graph_inputs
    from compress.stages.export_onnx import export_to_onnx
    from compress.stages.ptq import PTQStage
    from compress.stages.ptq.ort_quantize import StaticQuantizer, calibration_feeds
    from tests.conftest import make_sentences

    exported = export_to_onnx(TorchModel(tiny_classifier_dir), tmp_path / "onnx", opset=18)
    tokenizer = load_tokenizer(tiny_classifier_dir)
    encoded = [dict(tokenizer(text, truncation=True, max_length=32)) for text, _ in make_sentences(5)]
    feeds = calibration_feeds(encoded, graph_inputs(exported.onnx_path), tokenizer.pad_token_id or 0)
    quantizer = StaticQuantizer(exported, PTQStage(kind="ptq", mode="static"), feeds)
    try:
        first = quantizer.quantize(tmp_path / "int8", [])
        assert advances.count("ptq: calibration") == 5
        again = quantizer.quantize(tmp_path / "int8-again", [])  # ranges from the cache: no calibration bar
        assert advances.count("ptq: calibration") == 5
    finally:
        quantizer.cleanup()
    # the second model, made without a calibration bar, is the same model
    assert first.onnx_path.read_bytes() == again.onnx_path.read_bytes()
    text = bars.export_text()
    for drawn in ("export_onnx: exporting", "ptq: shape inference before calibration", "ptq: calibration"):
        assert drawn in text


# ---------------------------------------------------------------------------- bench cells


def test_bench_bar_advances_per_cell_run_naming_the_cell(advances, tmp_path, monkeypatch):
    named_while_running = []

    def fake_run_cell(cell, settings, work):
        named_while_running.append(cell.model.name)
        return {"status": "ok", "p50_ms": 1.0, "iterations": 3}

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "fingerprint", lambda: {"processor": "test"})
    models = [BenchModel(name, ONNXModel(tmp_path / name)) for name in ("fp32", "int8")]
    cells = [Cell(m, "ort-cpu", 1, None, 1) for m in models]
    cells.append(Cell(models[1], "ort-cuda", None, None, None, skipped="no CUDA here"))
    rows = runner.run_plan(Plan(cells, models), BenchSettings(repeats=2), tmp_path / "out")

    assert len(rows) == 3 and len(named_while_running) == 4  # 2 cells x 2 repeats; the skipped one not run
    assert advances == [
        "bench: fp32 on ort-cpu, b1xreal, 1 threads (repeat 1/2)",
        "bench: int8 on ort-cpu, b1xreal, 1 threads (repeat 1/2)",
        "bench: fp32 on ort-cpu, b1xreal, 1 threads (repeat 2/2)",
        "bench: int8 on ort-cpu, b1xreal, 1 threads (repeat 2/2)",
    ]


# ---------------------------------------------------------------------------- sensitivity search


def test_sensitivity_search_advances_per_layer_then_per_attempt(advances):
    from compress.stages.ptq.budget import fit_accuracy_budget
    from tests.helpers import toy_budget_problem

    logits_with, reference, score, _ = toy_budget_problem()

    result = fit_accuracy_budget(logits_with, reference, score, ["a", "b", "c"], [], max_drop=0.25)
    assert result.excluded == ["b"]
    assert advances == ["ptq budget: sensitivity of a", "ptq budget: sensitivity of b",
                        "ptq budget: sensitivity of c", "ptq budget: layers kept in float"]
