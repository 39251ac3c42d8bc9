"""Models and teachers named by Hugging Face Hub ids, resolved offline from a real Hub cache
layout built in a temporary HF_HOME (no network)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import RecipeError
from compress.hub import looks_like_hub_id, snapshot_of
from compress.models import resolve_model_dir
from compress.recipe import load_recipe
from tests.conftest import make_sentences, tiny_recipe_text, write_csv
from tests.helpers import add_to_hub_cache, manifest, recipe_error, stage_json

REPO = "tiny-org/tiny-bert"


def write_recipe(tmp_path, model: str, stages: str | None = None, extra: str = "") -> object:
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(model=model, stages=stages) + extra)
    return path


def test_hub_id_shapes():
    assert looks_like_hub_id("bert-base-uncased") and looks_like_hub_id("owner/name.v2_x")
    for path in ("./model", "../model", "/abs/model", "~/model", "a/b/c", "owner--x/y", "a/../b", ""):
        assert not looks_like_hub_id(path), path


def test_hub_id_resolves_offline_to_its_snapshot(tmp_path, hub_cache, tiny_classifier_dir):
    commit = add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    recipe = load_recipe(write_recipe(tmp_path, REPO))
    assert recipe.model == REPO  # kept as the id, not made a path under the recipe's folder
    path = resolve_model_dir(recipe.model)
    assert path == hub_cache / "models--tiny-org--tiny-bert" / "snapshots" / commit
    assert snapshot_of(path).commit == commit and (path / "config.json").is_file()


def test_revision_picks_a_branch_or_a_commit(tmp_path, hub_cache, tiny_classifier_dir, tiny_base_dir):
    main = add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    v2 = add_to_hub_cache(hub_cache, REPO, tiny_base_dir, ref="v2")
    assert main != v2
    assert snapshot_of(resolve_model_dir(REPO, "v2")).commit == v2
    assert snapshot_of(resolve_model_dir(REPO, main)).commit == main
    recipe = load_recipe(write_recipe(tmp_path, REPO, extra="model_revision: v2\n"))
    assert resolve_model_dir(recipe.model, recipe.model_revision).name == v2


def test_id_in_neither_place_is_one_line_naming_id_and_field(tmp_path, hub_cache):
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    message = recipe_error(tmp_path, tiny_recipe_text(model="nobody/no-such-model"))
    assert "recipe.yaml: model:" in message and "'nobody/no-such-model'" in message
    assert "not in the local cache" in message and "offline" in message
    message = recipe_error(tmp_path, tiny_recipe_text(model=REPO) + "model_revision: v9\n")
    assert "'tiny-org/tiny-bert@v9'" in message


def test_existing_directory_wins_over_a_hub_id(tmp_path, hub_cache, tiny_classifier_dir, tiny_base_dir):
    add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    shutil.copytree(tiny_base_dir, tmp_path / REPO)  # ./tiny-org/tiny-bert beside the recipe
    recipe = load_recipe(write_recipe(tmp_path, REPO))
    assert recipe.model == str((tmp_path / REPO).resolve())
    assert snapshot_of(resolve_model_dir(recipe.model)) is None


def test_dot_slash_is_always_a_directory(tmp_path, hub_cache, tiny_classifier_dir):
    add_to_hub_cache(hub_cache, "tiny-bert", tiny_classifier_dir)
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    message = recipe_error(tmp_path, tiny_recipe_text(model="./tiny-bert"))
    assert "model directory not found" in message and str(tmp_path / "tiny-bert") in message


def test_revision_of_a_local_model_is_refused(recipe_dir):
    message = recipe_error(recipe_dir, tiny_recipe_text() + "model_revision: main\n")
    assert "model:" in message and "only applies to a Hugging Face Hub id" in message


def test_hub_teacher_resolves_and_a_missing_one_names_its_field(tmp_path, hub_cache, tiny_classifier_dir):
    commit = add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    distill = """
  - kind: distill
    teacher: {teacher}
    every: 2
    max_steps: 1
"""
    recipe = load_recipe(write_recipe(tmp_path, "model", stages=distill.format(teacher=REPO)))
    assert recipe.stages[0].checkpoint_teacher(tmp_path / "recipe.yaml").name == commit
    message = recipe_error(tmp_path, tiny_recipe_text(stages=distill.format(teacher="nobody/teacher")))
    assert "recipe.yaml: stages[0].teacher:" in message and "'nobody/teacher'" in message
    message = recipe_error(tmp_path, tiny_recipe_text(stages=distill.format(teacher="model").replace(
        "every: 2", "every: 2\n    teacher_revision: main")))
    assert "stages[0].teacher:" in message and "only applies to a Hugging Face Hub id" in message


def test_cli_validate_offline_from_the_cache(tmp_path, hub_cache, tiny_classifier_dir):
    add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    result = CliRunner().invoke(app, ["validate", "--offline", str(write_recipe(tmp_path, REPO))])
    assert result.exit_code == 0, result.output
    assert "ok (4 stages" in result.output
    missing = write_recipe(tmp_path, "nobody/missing")
    result = CliRunner().invoke(app, ["validate", "--offline", str(missing)])
    assert result.exit_code == 2 and "'nobody/missing'" in result.output


def test_recipe_runs_end_to_end_from_a_hub_id_and_reruns_when_the_revision_moves(
        tmp_path, hub_cache, tiny_classifier_dir):
    first = add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir)
    stages = """
  - kind: finetune
    max_steps: 2
    batch_size: 8
  - kind: export_onnx
  - kind: ptq
"""
    path = write_recipe(tmp_path, REPO, stages=stages)
    from compress.pipeline import run_recipe

    run_dir = run_recipe(load_recipe(path), tmp_path / "runs", recipe_path=path).run_dir
    record = manifest(run_dir)
    assert record["model"] == REPO and record["model_commit"] == first and record["status"] == "completed"
    assert (run_dir / "03-ptq" / "model.onnx").is_file()
    finetuned = stage_json(run_dir, "01-finetune")["fingerprint"]

    run_recipe(load_recipe(path), tmp_path / "runs", recipe_path=path)  # unchanged: every stage reused
    assert stage_json(run_dir, "01-finetune")["fingerprint"] == finetuned

    moved = add_to_hub_cache(hub_cache, REPO, tiny_classifier_dir, commit="b" * 40)  # same files, new commit
    from compress.hub import forget_resolved

    forget_resolved()
    run_recipe(load_recipe(path), tmp_path / "runs", recipe_path=path)
    assert manifest(run_dir)["model_commit"] == moved
    assert stage_json(run_dir, "01-finetune")["fingerprint"] != finetuned


@pytest.mark.parametrize("value", ["owner/name", "bert-base-uncased"])
def test_a_hub_id_is_not_made_a_path(tmp_path, value):
    from compress.locations import resolve_model_location

    assert resolve_model_location(value, tmp_path, "recipe: model", RecipeError) == value
    (tmp_path / value).mkdir(parents=True)
    assert resolve_model_location(value, tmp_path, "recipe: model", RecipeError) == str((tmp_path / value).resolve())
