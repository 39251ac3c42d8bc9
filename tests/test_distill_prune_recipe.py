"""recipes/distill-prune.yaml, shrunk: the same stages with the tiny model, tiny data and
a few steps per training stage, runs end to end."""

from __future__ import annotations

from tests.helpers import manifest, run_shipped_recipe, stage_json


def test_tiny_distill_prune_recipe_runs(tmp_path, tiny_classifier_dir):
    run_dir = run_shipped_recipe("distill-prune.yaml", tmp_path, tiny_classifier_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 5
    distilled = stage_json(run_dir, "02-distill")
    assert distilled["student"]["structure"]["layers"] == 1  # every: 2 on the 2-layer tiny teacher
    pruned = stage_json(run_dir, "03-prune")
    assert pruned["parameters"] < distilled["parameters"] < stage_json(run_dir, "01-finetune")["parameters"]
    assert stage_json(run_dir, "05-optimize_onnx")["parity"]["max_abs_diff"] <= 1e-3
