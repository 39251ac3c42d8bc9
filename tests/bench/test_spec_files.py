"""Every bench spec shipped in benchmarks/ parses (the run directories it names are
checked when it runs, since runs/ is not committed)."""

from pathlib import Path

import pytest

from compress.bench.spec import load_bench_spec

SPECS = sorted((Path(__file__).parents[2] / "benchmarks").glob("*.yaml"))


def test_there_are_specs():
    assert SPECS


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_parses(path):
    spec = load_bench_spec(path)
    assert spec.models and spec.shape_cells
    assert all(Path(m.path).is_absolute() for m in spec.models)  # resolved against the spec's directory
