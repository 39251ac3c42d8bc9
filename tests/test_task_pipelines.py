"""Every stage for the tasks beyond single-text classification, end to end on a tiny model:
token classification (NER), extractive QA and text-pair classification, each through to a
package that the light runtime loads and predicts with."""

from __future__ import annotations

import json
import re
import shutil

import pytest

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
    # the student also learns from tag-free copies of the sentences, which the teacher labels
    stages = NER_STAGES.replace("keep_layers: [1]\n", "keep_layers: [1]\n    augment: {copies: 1}\n", 1)
    run_dir, m = run(tmp_path, tiny_base_dir, "token-classification", data, stages)
    assert m["status"] == "completed"
    for entry in m["stages"]:
        record = stage_json(run_dir, entry["name"])
        assert 0 <= record["entity_f1"] <= 1 and record["examples"] == 20, entry["name"]
        assert set(record["per_type"]) == {"person", "place"}
    assert stage_json(run_dir, "04-export_onnx")["parity"]["tag_agreement"] == 1.0
    distilled = json.loads((run_dir / "02-distill" / "config.json").read_text())
    assert distilled["num_hidden_layers"] == 1 and distilled["architectures"] == ["BertForTokenClassification"]
    augmented = stage_json(run_dir, "02-distill")["augmentation"]  # tag-free copies the teacher labels
    assert augmented["transfer_set"] == 2 * augmented["original_examples"]

    predictor = Predictor.load(run_dir / "07-package")
    (result,) = predictor.predict(["alice went to paris"])
    for entity in result["entities"]:
        assert entity["type"] in ("person", "place")
        assert "alice went to paris"[entity["start"]:entity["end"]] == entity["text"]
    deploy = json.loads((run_dir / "07-package" / "deploy.json").read_text())
    assert deploy["task"] == "token-classification" and deploy["validated"][0]["tag_agreement"] == 1.0
    triton = run_dir / "07-package" / "triton" / "token-classification"
    # per-token tags are no Triton classification output: the tag names ship, label_filename does not
    assert "label_filename" not in (triton / "config.pbtxt").read_text() and (triton / "labels.txt").is_file()


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


def squad_file(path, n: int, seed: int = 0) -> str:
    """SQuAD v1.1 JSON: who went where, with a long paragraph every few questions (several windows)."""
    import random

    from tests.test_token_classification import PEOPLE, PLACES

    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        filler = " the weather was mild and the trains ran on time." * (12 if i % 4 == 0 else 1)
        context = f"On monday {person} travelled to {place}.{filler}"
        question = rng.choice([(f"Where did {person} travel?", place), (f"Who travelled to {place}?", person)])
        paragraphs.append({"context": context, "qas": [{"id": str(i), "question": question[0], "answers": [
            {"text": question[1], "answer_start": context.index(question[1])}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path)


def test_question_answering_through_every_stage(tmp_path, tiny_base_dir):
    squad_file(tmp_path / "squad.json", 60)
    data = "  train: squad.json\n  format: squad\n  eval_fraction: 0.25\n  max_length: 48"
    stages = NER_STAGES.replace("    mode: static\n", "    mode: dynamic\n").replace("    calibration_samples: 16\n", "")
    run_dir, m = run(tmp_path, tiny_base_dir, "question-answering", data, stages)
    assert m["status"] == "completed" and m["metric"] == "f1"
    for entry in m["stages"]:
        record = stage_json(run_dir, entry["name"])
        assert 0 <= record["exact_match"] <= record["f1"] <= 1 and record["examples"] == 15, entry["name"]
    assert stage_json(run_dir, "04-export_onnx")["parity"]["span_agreement"] == 1.0

    predictor = Predictor.load(run_dir / "07-package")
    context = "On monday alice travelled to oslo." + " the weather was mild and the trains ran on time." * 12
    (answer,) = predictor.predict(["Where did alice travel?"], [context])
    if answer["start"] is not None:
        assert context[answer["start"]:answer["end"]] == answer["answer"] and 0 < answer["score"] <= 1
    deploy = json.loads((run_dir / "07-package" / "deploy.json").read_text())
    assert deploy["labels"] is None and deploy["validated"][0]["span_agreement"] == 1.0


def test_question_answering_qat_exports_start_and_end_logits(tmp_path, tiny_base_dir):
    import onnx

    squad_file(tmp_path / "squad.json", 60)
    data = "  train: squad.json\n  format: squad\n  eval_fraction: 0.25\n  max_length: 48"
    stages = f"\n  - kind: finetune\n    {TRAIN}\n  - kind: qat\n    calibration_samples: 8\n    {TRAIN}\n"
    run_dir, m = run(tmp_path, tiny_base_dir, "question-answering", data, stages)
    assert m["status"] == "completed"
    graph = onnx.load(str(run_dir / "02-qat" / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["start_logits", "end_logits"]
    assert stage_json(run_dir, "02-qat")["parity"]["span_agreement"] >= 0.9


def test_text_pairs_through_package_and_predictor(tmp_path, tiny_base_dir):
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(80):
        a, b = rng.sample(["cats", "dogs", "birds", "fish", "cows", "goats"], 2)
        same = rng.random() < 0.5
        rows.append({"premise": f"the {a} sleep in the barn", "hypothesis": f"the {a if same else b} sleep",
                     "label": "entailment" if same else "contradiction"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ("  train: pairs.jsonl\n  text_column: premise\n  text_pair_column: hypothesis\n"
            "  eval_fraction: 0.25\n  max_length: 32")
    stages = f"\n  - kind: finetune\n    {TRAIN}\n  - kind: export_onnx\n  - kind: ptq\n  - kind: package\n"
    run_dir, m = run(tmp_path, tiny_base_dir, "text-classification", data, stages)
    assert m["status"] == "completed"
    record = stage_json(run_dir, "04-package")
    assert record["package"]["validated"][0]["label_agreement"] == 1.0
    assert len(record["confusion_matrix"]) == 2 and 0 <= record["macro_f1"] <= 1
    predictor = Predictor.load(run_dir / "04-package")
    (one,) = predictor.predict(["the cats sleep in the barn"], ["the cats sleep"])
    assert one["label"] in ("entailment", "contradiction")
    alone = predictor.predict(["the cats sleep in the barn"])  # the second text changes the input
    assert alone[0]["scores"] != one["scores"]


@pytest.mark.parametrize("task, data, message", [
    ("token-classification", "  train: x.jsonl\n  text_pair_column: b", r"data.text_pair_column: token-classification "
                                                                        "takes no text pairs"),
    ("question-answering", "  train: x.jsonl\n  labels: [a, b]", r"data.labels: question-answering has no labels"),
    ("text-classification", "  train: x.json\n  format: squad", r"data.format: squad files hold question-answering "
                                                                "data, not text-classification data"),
    ("text-classification", "  train: builtin:wnut16", r"built-in dataset 'wnut16' is token-classification data"),
])
def test_validate_refuses_data_the_task_cannot_take(tmp_path, tiny_base_dir, task, data, message):
    from tests.helpers import recipe_error

    shutil.copytree(tiny_base_dir, tmp_path / "model")
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "x.json").write_text('{"data": []}\n')
    text = f"name: t\nmodel: model\ntask: {task}\ndata:\n{data}\nstages:\n  - kind: finetune\n"
    assert re.search(message, recipe_error(tmp_path, text))
