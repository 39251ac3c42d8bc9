"""The committed real-data task runs (benchmarks/results/tasks/<run>/) and the tables made
from them stay in step: summary.md and bench/results.md re-render from the committed
records, and the README's task results table quotes them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from compress.bench.report import markdown_table, read_rows
from compress.report import markdown_summary

ROOT = Path(__file__).parents[1]
RESULTS = sorted(p for p in (ROOT / "benchmarks" / "results" / "tasks").glob("*") if (p / "manifest.json").is_file())
sys.path.insert(0, str(ROOT / "benchmarks" / "tasks"))


def test_there_are_task_results():
    assert {p.name for p in RESULTS} >= {"ner-wnut16", "nli-snli", "qa-squad"}


@pytest.mark.parametrize("results", RESULTS, ids=lambda p: p.name)
def test_summary_and_benchmark_tables_re_render_from_the_records(results):
    assert markdown_summary(results) == (results / "summary.md").read_text(encoding="utf-8")
    if (results / "bench" / "results.jsonl").is_file():
        rows = read_rows(results / "bench" / "results.jsonl")
        assert markdown_table(rows) == (results / "bench" / "results.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("results", [p for p in RESULTS if (p / "bench").is_dir()], ids=lambda p: p.name)
def test_readme_quotes_the_records(results):
    from collect import readme_row

    assert readme_row(results) in (ROOT / "README.md").read_text(encoding="utf-8")


def test_committed_results_hold_no_machines_paths():
    """Records name artifacts relative to their bench spec or run, and files relative to the
    repository (or by their builtin name), never by where one machine kept them."""
    machine = re.compile(r'"(/(?:work|tmp|home|root|Users|var)/[^"]*)"')
    upward = re.compile(r'"((?:\.\./)+[^"]*)"')  # relative, from the record's folder
    found = []
    for f in (ROOT / "benchmarks" / "results").rglob("*.json*"):
        text = f.read_text(encoding="utf-8")
        found += [f"{f.relative_to(ROOT)}: {m.group(1)}" for m in [machine.search(text)] if m]
        # a relative path that climbs out of the repository names where one machine kept the model
        found += [f"{f.relative_to(ROOT)}: {m.group(1)}" for m in upward.finditer(text)
                  if not (f.parent / m.group(1)).resolve().is_relative_to(ROOT.resolve())]
    assert not found, found[:5]
