"""Every recipe shipped in recipes/ validates (with the packaged model and data). The
headline recipes start from a teacher that benchmarks/headline/prepare_teacher.sh makes
outside git (and quickstart-ptq-large-batch from `make run`'s model); where it is absent they
are validated with a tiny classifier in its place."""

from pathlib import Path

import pytest
import yaml

from compress.recipe import load_recipe

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TEACHER_CACHE = ROOT / "benchmarks" / ".cache"
MADE_BY_MAKE_RUN = ROOT / "runs"  # runs/quickstart: recipes that start from the quickstart's fine-tuned model
TASK_DATA = ROOT / "benchmarks" / "tasks" / "data"


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path, tmp_path, tiny_classifier_dir):
    raw = yaml.safe_load(path.read_text())
    model = (path.parent / raw["model"]).resolve()
    made_elsewhere = any(model.is_relative_to(d.resolve()) for d in (TEACHER_CACHE, MADE_BY_MAKE_RUN))
    if made_elsewhere and not model.exists():
        raw["model"] = str(tiny_classifier_dir)
        path = tmp_path / path.name
        path.write_text(yaml.safe_dump(raw))
    data_files = [(path.parent / raw["data"][k]).resolve() for k in ("train", "eval")
                  if not str(raw["data"].get(k, "builtin:")).startswith("builtin:") and raw["data"].get(k)]
    missing = [f for f in data_files if f.is_relative_to(TASK_DATA.resolve()) and not f.exists()]
    # task data that benchmarks/tasks/get_data.py fetches outside git: validated without the files
    recipe = load_recipe(path, check_files=not missing)
    assert recipe.stages
