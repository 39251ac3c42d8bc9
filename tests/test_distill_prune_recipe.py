"""recipes/distill-prune.yaml, shrunk: the same stages with the tiny model, tiny data and
a few steps per training stage, runs end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from tests.conftest import make_sentences, write_csv
from tests.helpers import manifest, stage_json

RECIPE = Path(__file__).parents[1] / "recipes" / "distill-prune.yaml"


def test_tiny_distill_prune_recipe_runs(tmp_path, tiny_classifier_dir):
    raw = yaml.safe_load(RECIPE.read_text())
    shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    raw["model"] = "model"
    raw["data"] = {"train": "reviews.csv", "eval_fraction": 0.25, "seed": 7, "max_length": 32}
    raw["measure"] = {"threads": 1, "latency_iterations": 5, "warmup": 1}
    for stage in raw["stages"]:
        if "epochs" in stage:
            stage.update(epochs=1, max_steps=2, batch_size=8)
        if stage["kind"] == "prune":
            stage["importance_batches"] = 2
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_dir = run_recipe(load_recipe(path), tmp_path / "runs", recipe_path=path).run_dir
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 5
    distilled = stage_json(run_dir, "02-distill")
    assert distilled["student"]["structure"]["layers"] == 1  # every: 2 on the 2-layer tiny teacher
    pruned = stage_json(run_dir, "03-prune")
    assert pruned["parameters"] < distilled["parameters"] < stage_json(run_dir, "01-finetune")["parameters"]
    assert stage_json(run_dir, "05-optimize_onnx")["parity"]["max_abs_diff"] <= 1e-3
