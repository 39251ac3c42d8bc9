"""Every YAML file the repository ships validates as what it is: a recipe (`stages:`) through
the recipe loader, a bench spec (`models:`) through the spec loader, and nothing else is
allowed. Recipes whose model is a run directory made outside git (benchmarks/.cache, runs/)
are validated with the tiny classifier in its place; task data fetched outside git is
validated without its files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress.bench.spec import load_bench_spec
from compress.recipe import load_recipe

ROOT = Path(__file__).parents[1]
OUTSIDE_GIT = ("benchmarks/.cache", "benchmarks/tasks/data", "runs", ".venv")
SHIPPED = sorted(p for pattern in ("*.yaml", "*.yml") for p in ROOT.rglob(pattern)
                 if not any(p.relative_to(ROOT).as_posix().startswith(d) for d in OUTSIDE_GIT)
                 and ".pytest_cache" not in p.parts and "node_modules" not in p.parts)
TASK_DATA = ROOT / "benchmarks" / "tasks" / "data"


def test_the_shipped_yaml_files_are_all_found():
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED}
    assert {"recipes/quickstart.yaml", "benchmarks/quickstart.yaml", "benchmarks/headline/teacher.yaml",
            "benchmarks/results/quantization/qat-from-quickstart.yaml",
            "benchmarks/results/distill-prune/teacher-onnx.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_yaml_validates(path, tmp_path, tiny_classifier_dir):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict), f"{path}: not a mapping"
    if "stages" in raw:
        model = raw.get("model", "")
        if not model.startswith("builtin:") and not (path.parent / model).exists():
            raw["model"] = str(tiny_classifier_dir)  # a run made outside git: its stages still validate
            copy = tmp_path / path.name
            data = raw.get("data") or {}
            for k in ("train", "eval"):
                v = data.get(k)
                if v and not str(v).startswith("builtin:"):
                    data[k] = str((path.parent / v).resolve())
            copy.write_text(yaml.safe_dump(raw), encoding="utf-8")
            path = copy
        data = raw.get("data") or {}
        files = [(path.parent / data[k]).resolve() for k in ("train", "eval")
                 if data.get(k) and not str(data[k]).startswith("builtin:")]
        missing = [f for f in files if f.is_relative_to(TASK_DATA.resolve()) and not f.exists()]
        recipe = load_recipe(path, check_files=not missing)
        assert recipe.stages
    elif "models" in raw:
        spec = load_bench_spec(path)
        assert spec.models and spec.shape_cells
    else:
        pytest.fail(f"{path}: neither a recipe (stages:) nor a bench spec (models:)")
