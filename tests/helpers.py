"""Run a recipe on the tiny model and data, returning the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compress.errors import RecipeError
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from tests.conftest import make_sentences, tiny_recipe_text, write_csv


def run_tiny(tmp: Path, model_dir: Path, stages: str, **recipe_kw) -> Path:
    if not (tmp / "model").exists():
        shutil.copytree(model_dir, tmp / "model")
    write_csv(tmp / "reviews.csv", make_sentences(80))
    path = tmp / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages=stages, **recipe_kw))
    ctx = run_recipe(load_recipe(path), tmp / "runs", recipe_path=path)
    return ctx.run_dir


def stage_json(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name / "stage.json").read_text())


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def recipe_error(recipe_dir: Path, text: str) -> str:
    """Load `text` as recipe.yaml, expecting the loader to refuse it; the message is one line."""
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message
