"""The headline recipes in tiny form: the same stages and benchmark block on a tiny MPNet
classifier (the real teacher's architecture), tiny data and a few steps per training stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import manifest, run_shipped_recipe, stage_json


@pytest.fixture(scope="module")
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


def bench_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "bench" / "results.jsonl").read_text().splitlines()]


def test_headline_ptq_in_tiny_form(tmp_path, tiny_mpnet_dir):
    run_dir = run_shipped_recipe("headline-ptq.yaml", tmp_path, tiny_mpnet_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 3
    assert stage_json(run_dir, "03-ptq")["int8_coverage"]
    rows = [r for r in bench_rows(run_dir) if r["status"] == "ok"]
    baseline = {(r["target"], r["shape"]) for r in rows if r["role"] == "baseline"}
    assert baseline == {("torch-cpu", "b1xreal"), ("torch-cpu", "b4xreal")}  # the teacher, in the same run


def test_headline_full_chain_in_tiny_form(tmp_path, tiny_mpnet_dir):
    run_dir = run_shipped_recipe("headline-full.yaml", tmp_path, tiny_mpnet_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 4
    assert stage_json(run_dir, "01-distill")["student"]["structure"]["layers"] == 2  # every: 2 on 4 layers
    pruned = stage_json(run_dir, "02-prune")
    assert sum(pruned["structure_after"]["ffn_per_layer"]) == 64  # half of 2 x 64, ranked globally
    assert pruned["parameters"] < stage_json(run_dir, "01-distill")["parameters"]
    rows = [r for r in bench_rows(run_dir) if r["status"] == "ok"]
    assert {r["model"].split("/")[-1] for r in rows} >= {tiny_mpnet_dir.name, "04-optimize_onnx"}
