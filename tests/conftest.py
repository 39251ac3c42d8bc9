"""Shared fixtures: a tiny BERT built from a config (no download) with the packaged
MiniLM vocabulary, and a small labelled CSV."""

from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "wonderful", "moving", "brilliant", "funny", "charming", "superb"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "clumsy", "tedious", "weak"]
FILLER = ["the", "film", "movie", "plot", "story", "acting", "was", "is", "really", "quite", "a", "and"]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests that use the real packaged models")


def _gpu_reasons() -> dict[str, str | None]:
    from compress.trt_engine import trt_unavailable_reason

    try:
        import torch

        gpu = None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"
    except ImportError:
        gpu = "torch is not installed"
    return {"gpu": gpu, "trt": trt_unavailable_reason()}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.skip(reason="slow: uses the real packaged model; run with --run-slow (make test-slow)")
    reasons = _gpu_reasons() if any("gpu" in i.keywords or "trt" in i.keywords for i in items) else {}
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(slow)
        for marker in ("gpu", "trt"):
            if marker in item.keywords and reasons.get(marker):
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {reasons[marker]}"))


def make_sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 5) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def minilm_tokenizer_dir() -> Path:
    from compress.models import builtin_model_dir

    return builtin_model_dir("minilm-l6")


def _tiny_bert(path: Path, tokenizer_dir: Path, classifier: bool) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertModel,
    )

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    if classifier:
        config.num_labels = 2
        config.id2label = {0: "neg", 1: "pos"}
        config.label2id = {"neg": 0, "pos": 1}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    """A randomly initialised 2-layer BertModel (no task head) with the MiniLM vocabulary."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-base"), minilm_tokenizer_dir, classifier=False)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    """A randomly initialised 2-layer BertForSequenceClassification with labels neg/pos."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-clf"), minilm_tokenizer_dir, classifier=True)


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "reviews.csv", make_sentences(80))


@pytest.fixture
def recipe_dir(tmp_path, tiny_base_dir, tiny_csv) -> Path:
    """A directory with a model and data beside where recipe files are written."""
    shutil.copytree(tiny_base_dir, tmp_path / "model")
    return tmp_path


def tiny_recipe_text(model: str = "model", train: str = "reviews.csv", stages: str | None = None) -> str:
    stages = stages or """
  - kind: finetune
    epochs: 2
    batch_size: 8
    learning_rate: 1.0e-3
  - kind: export_onnx
  - kind: optimize_onnx
  - kind: ptq
"""
    return f"""
name: tiny
model: {model}
task: text-classification
data:
  train: {train}
  eval_fraction: 0.25
  seed: 7
  max_length: 32
stages:{stages}
measure:
  threads: 1
  latency_iterations: 5
  warmup: 1
"""


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face Hub cache of this test's own (HF_HOME, HF_HUB_CACHE), offline:
    fill it with tests.helpers.add_to_hub_cache."""
    from huggingface_hub import constants

    import compress.hub as hub

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read by huggingface_hub at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.forget_resolved()
    yield cache
    hub.forget_resolved()


def make_paragraphs(n: int, seed: int = 0) -> list[str]:
    """Plain English-like text for language-model tests (the sentences above, joined in fours)."""
    sentences = [text for text, _ in make_sentences(4 * n, seed)]
    return [". ".join(sentences[i : i + 4]) + "." for i in range(0, 4 * n, 4)]


def _tiny_llama(path: Path) -> Path:
    """A randomly initialised 2-layer LlamaForCausalLM with grouped-query attention (4 query
    heads, 2 key/value heads) and a byte-level BPE tokenizer trained here on the test text:
    no download, a few seconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(make_paragraphs(200), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    GenerationConfig(bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer llama causal LM (GQA 4/2 heads) with its own small tokenizer."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    """A randomly initialised 4-layer MPNetForSequenceClassification; its tokenizer is an
    MPNet tokenizer over the packaged MiniLM WordPiece vocabulary."""
    import torch
    from transformers import (
        MPNetConfig,
        MPNetForSequenceClassification,
        MPNetTokenizerFast,
    )

    path = tmp_path_factory.mktemp("tiny-mpnet")
    tokenizer = MPNetTokenizerFast(vocab_file=str(minilm_tokenizer_dir / "vocab.txt"))
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    MPNetForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
