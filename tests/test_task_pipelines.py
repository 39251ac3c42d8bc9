"""Every stage for the tasks beyond single-text classification, end to end on a tiny model:
token classification (NER), extractive QA and text-pair classification, each through to a
package that the light runtime loads and predicts with."""

from __future__ import annotations

import json
import shutil

from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from compress.runtime import Predictor
from tests.helpers import manifest, stage_json
from tests.test_token_classification import make_tagged, write_conll

MEASURE = """
measure:
  threads: 1
  latency_iterations: 3
  warmup: 1
"""
TRAIN = "max_steps: 3\n    batch_size: 8\n    learning_rate: 1.0e-3"


def run(tmp_path, model_dir, task: str, data: str, stages: str) -> tuple:
    if not (tmp_path / "model").exists():
        shutil.copytree(model_dir, tmp_path / "model")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: {task}\nmodel: model\ntask: {task}\ndata:\n{data}\nstages:{stages}{MEASURE}")
    run_dir = run_recipe(load_recipe(path), tmp_path / "runs", recipe_path=path).run_dir
    return run_dir, manifest(run_dir)


NER_STAGES = f"""
  - kind: finetune
    {TRAIN}
  - kind: distill
    keep_layers: [1]
    {TRAIN}
  - kind: prune
    heads: 0.5
    ffn: 0.5
    importance_batches: 2
    {TRAIN}
  - kind: export_onnx
  - kind: optimize_onnx
  - kind: ptq
    mode: static
    calibration_samples: 16
    max_metric_drop: 1.0
  - kind: package
"""


def test_token_classification_through_every_stage(tmp_path, tiny_base_dir):
    write_conll(tmp_path / "ner.conll", make_tagged(80))
    data = "  train: ner.conll\n  eval_fraction: 0.25\n  max_length: 32"
    run_dir, m = run(tmp_path, tiny_base_dir, "token-classification", data, NER_STAGES)
    assert m["status"] == "completed"
    for entry in m["stages"]:
        record = stage_json(run_dir, entry["name"])
        assert 0 <= record["entity_f1"] <= 1 and record["examples"] == 20, entry["name"]
        assert set(record["per_type"]) == {"person", "place"}
    assert stage_json(run_dir, "04-export_onnx")["parity"]["tag_agreement"] == 1.0
    distilled = json.loads((run_dir / "02-distill" / "config.json").read_text())
    assert distilled["num_hidden_layers"] == 1 and distilled["architectures"] == ["BertForTokenClassification"]

    predictor = Predictor.load(run_dir / "07-package")
    (result,) = predictor.predict(["alice went to paris"])
    for entity in result["entities"]:
        assert entity["type"] in ("person", "place")
        assert "alice went to paris"[entity["start"]:entity["end"]] == entity["text"]
    deploy = json.loads((run_dir / "07-package" / "deploy.json").read_text())
    assert deploy["task"] == "token-classification" and deploy["validated"][0]["tag_agreement"] == 1.0


def test_token_classification_qat(tmp_path, tiny_base_dir):
    write_conll(tmp_path / "ner.conll", make_tagged(80))
    data = "  train: ner.conll\n  eval_fraction: 0.25\n  max_length: 32"
    stages = f"""
  - kind: finetune
    {TRAIN}
  - kind: qat
    calibration_samples: 8
    {TRAIN}
  - kind: package
"""
    run_dir, m = run(tmp_path, tiny_base_dir, "token-classification", data, stages)
    assert m["status"] == "completed"
    qat = stage_json(run_dir, "02-qat")
    assert qat["parity"]["tag_agreement"] >= 0.9 and qat["int8_coverage"]
