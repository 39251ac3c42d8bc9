"""The committed multi-process measurement: results.md and the README's table are what
benchmarks/distributed/measure.py renders from steps.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distributed"


def _render():
    sys.path.insert(0, str(ROOT / "benchmarks" / "distributed"))
    try:
        from measure import render
    finally:
        sys.path.pop(0)
    return render


def test_results_table_and_readme_are_rendered_from_the_raw_rows():
    rows = [json.loads(line) for line in (RESULTS / "steps.jsonl").read_text().splitlines()]
    assert {r["processes"] for r in rows} == {1, 2}
    assert all(r["global_batch_size"] == rows[0]["global_batch_size"] for r in rows)  # same work per step
    assert all(r["per_device_batch_size"] * r["processes"] == r["global_batch_size"] for r in rows)
    table = _render()(rows)
    assert (RESULTS / "results.md").read_text() == table
    assert table in (ROOT / "README.md").read_text()
