"""recipes/ptq-static.yaml and recipes/qat.yaml end to end, in tiny form: the shipped
stages on a 2-layer model and 64 Rotten Tomatoes snippets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.pipeline import run_recipe
from compress.recipe import load_recipe

RECIPES = Path(__file__).parents[1] / "recipes"
TINY = {  # per stage kind: what shrinks so the run takes seconds
    "finetune": {"epochs": 1, "batch_size": 16},
    "qat": {"max_steps": 2, "epochs": 1, "batch_size": 16, "calibration_samples": 8, "budget_samples": 16,
            "max_accuracy_drop": 1.0},
    "ptq": {"calibration_samples": 16, "budget_samples": 16},
}


def tiny_form(name: str, model_dir: Path):
    recipe = load_recipe(RECIPES / name)
    data = recipe.data.model_copy(update={"max_train_samples": 64, "max_eval_samples": 32, "max_length": 32})
    stages = [s.model_copy(update=TINY.get(s.kind, {})) for s in recipe.stages]
    measure = recipe.measure.model_copy(update={"threads": 1, "latency_iterations": 5, "warmup": 1})
    return recipe.model_copy(update={"model": str(model_dir), "data": data, "stages": stages, "measure": measure})


@pytest.mark.parametrize("name, quantized", [("ptq-static.yaml", "04-ptq"), ("qat.yaml", "02-qat")])
def test_quantization_recipe_in_tiny_form(tmp_path, tiny_base_dir, name, quantized):
    run_dir = run_recipe(tiny_form(name, tiny_base_dir), tmp_path).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["final_artifact"]["kind"] == "onnx"
    record = json.loads((run_dir / quantized / "stage.json").read_text())
    assert record["int8_coverage"]["int8_matmul_nodes"] > 0 and record["int8_coverage"]["qdq_pairs"] > 0
    assert record["accuracy_budget"]["met"]
    assert (run_dir / manifest["final_artifact"]["path"] / "deploy.json").is_file()
