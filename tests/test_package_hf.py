"""A package directory is also a Hugging Face model directory: optimum's
ORTModelFor<Task>.from_pretrained and transformers' pipeline() load it without a warning,
and its README.md is a model card with Hub metadata. The recipe starts from a Hub id
(an offline Hub cache built in a temporary HF_HOME), so the card names its base model."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from compress.runtime import Predictor
from tests.conftest import make_sentences, write_csv
from tests.helpers import add_to_hub_cache, stage_json

MEASURE = "measure:\n  threads: 1\n  latency_iterations: 3\n  warmup: 1\n"
FINETUNE = "\n  - kind: finetune\n    max_steps: 2\n    batch_size: 8\n"
# the one WARNING transformers' pipeline() logs for every model, whatever it is
PIPELINE_NOTE = "Device set to use"


@contextmanager
def hf_warnings():
    """Everything optimum and transformers warn about (their loggers and Python warnings)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("optimum", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records, caught
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def assert_no_warnings(records, caught, library_notes: tuple[str, ...] = ()) -> None:
    """library_notes: files whose own warnings come for any model (not this package's doing)."""
    messages = [r.getMessage() for r in records if not r.getMessage().startswith(PIPELINE_NOTE)]
    messages += [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                 if not w.filename.endswith(library_notes)]
    assert messages == [], messages


def run_package(tmp: Path, model: str, task: str, data: str, stages: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(f"name: {task}\nmodel: {model}\ntask: {task}\ndata:\n{data}\nstages:{stages}"
                    f"  - kind: export_onnx\n  - kind: package\n{MEASURE}")
    run_dir = run_recipe(load_recipe(path), tmp / "runs", recipe_path=path).run_dir
    return run_dir / f"{len(load_recipe(path).stages):02d}-package"


@pytest.fixture(scope="module")
def hub_classifier_package(tmp_path_factory, tiny_classifier_dir) -> Path:
    """export_onnx → package from the Hub id 'tiny-org/tiny-clf', resolved offline."""
    from huggingface_hub import constants

    import compress.hub as hub

    tmp = tmp_path_factory.mktemp("hf-pkg")
    cache = tmp / "hf-home" / "hub"
    add_to_hub_cache(cache, "tiny-org/tiny-clf", tiny_classifier_dir)
    write_csv(tmp / "reviews.csv", make_sentences(80))
    data = "  train: reviews.csv\n  eval_fraction: 0.25\n  seed: 7\n  max_length: 32"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        hub.forget_resolved()
        try:
            return run_package(tmp, "tiny-org/tiny-clf", "text-classification", data, "\n")
        finally:
            hub.forget_resolved()


def test_text_classification_package_loads_with_optimum_and_pipeline(hub_classifier_package):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    package = hub_classifier_package
    texts = ["a good and charming film", "the plot was dull and tedious"]
    with hf_warnings() as (records, caught):
        model = ORTModelForSequenceClassification.from_pretrained(package)
        pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(package))
        results = pipe(texts)
    assert_no_warnings(records, caught)
    assert Path(model.model_path).name == "model.onnx" and Path(model.model_path).parent == package
    ours = Predictor.load(package).predict(texts)  # the light runtime still loads the same directory
    assert [r["label"] for r in results] == [r["label"] for r in ours]
    assert [r["score"] for r in results] == pytest.approx([r["score"] for r in ours], abs=1e-5)


def test_model_card_carries_hub_metadata(hub_classifier_package):
    from huggingface_hub import ModelCard

    package = hub_classifier_package
    card = ModelCard.load(package / "README.md")
    data = card.data
    accuracy = stage_json(package.parent, "01-export_onnx")["accuracy"]
    assert data.base_model == "tiny-org/tiny-clf" and data.datasets == ["reviews.csv"]
    assert data.pipeline_tag == "text-classification" and data.library_name == "optimum"
    assert {"onnx", "compress", "fp32"} <= set(data.tags)
    assert data.metrics[0] == "accuracy"
    (result,) = [r for r in data.eval_results if r.metric_type == "accuracy"]
    assert result.metric_value == pytest.approx(accuracy) and result.task_type == "text-classification"
    assert "ORTModelForSequenceClassification.from_pretrained" in card.text and "# text-classification" in card.text
    deploy = json.loads((package / "deploy.json").read_text())
    assert "README.md" in deploy["files"]  # hashed like every other file
    assert sorted(p.name for p in package.rglob("model.onnx")) == ["model.onnx"]  # the Triton copy is named apart


def test_token_classification_package_loads_with_optimum_and_pipeline(tmp_path, tiny_base_dir):
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline

    from tests.test_token_classification import make_tagged, write_conll

    shutil.copytree(tiny_base_dir, tmp_path / "model")
    write_conll(tmp_path / "ner.conll", make_tagged(60))
    package = run_package(tmp_path, "model", "token-classification",
                          "  train: ner.conll\n  eval_fraction: 0.25\n  max_length: 32", FINETUNE)
    with hf_warnings() as (records, caught):
        model = ORTModelForTokenClassification.from_pretrained(package)
        pipe = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(package))
        entities = pipe("alice went to paris")
    assert_no_warnings(records, caught)
    tags = set(json.loads((package / "deploy.json").read_text())["labels"])
    assert all(e["entity"] in tags for e in entities)


def test_question_answering_package_loads_with_optimum_and_pipeline(tmp_path, tiny_base_dir):
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoTokenizer, pipeline

    from tests.test_task_pipelines import squad_file

    shutil.copytree(tiny_base_dir, tmp_path / "model")
    squad_file(tmp_path / "squad.json", 60)
    package = run_package(tmp_path, "model", "question-answering",
                          "  train: squad.json\n  format: squad\n  eval_fraction: 0.25\n  max_length: 48", FINETUNE)
    context = "On monday alice travelled to oslo."
    with hf_warnings() as (records, caught):
        model = ORTModelForQuestionAnswering.from_pretrained(package)
        pipe = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(package))
        answer = pipe(question="Where did alice travel?", context=context)
    # the QA pipeline's postprocessing calls np.array on a torch tensor (numpy 2 deprecation), for any model
    assert_no_warnings(records, caught, library_notes=("transformers/pipelines/question_answering.py",))
    assert context[answer["start"]:answer["end"]] == answer["answer"]
