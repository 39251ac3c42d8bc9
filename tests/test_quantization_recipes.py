"""recipes/ptq-static.yaml and recipes/qat.yaml end to end, in tiny form: the shipped
stages on a 2-layer model and 64 Rotten Tomatoes snippets."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_shipped_recipe

BUILTIN_SLICE = {"train": "builtin:rotten-tomatoes", "eval_fraction": 0.1, "seed": 13, "max_train_samples": 64,
                 "max_eval_samples": 32, "max_length": 32}
FINE_TUNED_ENOUGH = {  # a whole (64-snippet) epoch, so the accuracy budget has something to keep;
    # each recipe's own max_metric_drop stays (ptq-static 0.01, qat 0.02): the budget can fail here
    "finetune": {"max_steps": None, "batch_size": 16},
    "qat": {"batch_size": 16, "calibration_samples": 8},
}
SHIPPED_BUDGET = {"ptq-static.yaml": 0.01, "qat.yaml": 0.02}


@pytest.mark.parametrize("name, quantized", [("ptq-static.yaml", "04-ptq"), ("qat.yaml", "02-qat")])
def test_quantization_recipe_in_tiny_form(tmp_path, tiny_base_dir, name, quantized):
    run_dir = run_shipped_recipe(name, tmp_path, tiny_base_dir, BUILTIN_SLICE, FINE_TUNED_ENOUGH)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["final_artifact"]["kind"] == "onnx"
    record = json.loads((run_dir / quantized / "stage.json").read_text())
    assert record["int8_coverage"]["int8_matmul_nodes"] > 0 and record["int8_coverage"]["qdq_pairs"] > 0
    budget = record["accuracy_budget"]
    assert budget["max_accuracy_drop"] == SHIPPED_BUDGET[name] and budget["slice_examples"] >= 8
    assert budget["drop"] == pytest.approx(budget["reference_accuracy"] - budget["quantized_accuracy"], abs=1e-5)
    assert budget["met"] and budget["drop"] <= SHIPPED_BUDGET[name] + 1e-9
    assert (run_dir / manifest["final_artifact"]["path"] / "deploy.json").is_file()
