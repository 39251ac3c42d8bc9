"""The prune_vocabulary stage: the word embedding keeps only the rows the train text uses, the
tokenizer is renumbered to match, and text made of kept tokens gives the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.errors import StageError
from tests.conftest import make_sentences
from tests.helpers import recipe_error, run_tiny, stage_json

STAGES = "\n  - kind: prune_vocabulary\n  - kind: export_onnx\n"


def _logits(model_dir, texts):
    tok = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return net(**tok(texts, padding=True, return_tensors="pt")).logits, tok


@pytest.mark.parametrize("fixture", ["tiny_mpnet_dir", "tiny_classifier_dir"])
def test_pruned_model_matches_the_original_on_text_it_covers(tmp_path, request, fixture):
    source = request.getfixturevalue(fixture)
    run_dir = run_tiny(tmp_path, source, STAGES)
    record = stage_json(run_dir, "01-prune_vocabulary")
    vocab = record["vocabulary"]
    assert vocab["rows_before"] == json.loads((source / "config.json").read_text())["vocab_size"]
    assert vocab["kept_seen_in_train"] < vocab["rows_after"] < vocab["rows_before"] // 10
    assert vocab["eval_coverage"] == {"tokens_kept": 1.0, "examples_unchanged": 1.0}  # same word list
    pruned = run_dir / "01-prune_vocabulary"
    config = json.loads((pruned / "config.json").read_text())
    assert config["vocab_size"] == vocab["rows_after"]
    texts = [t for t, _ in make_sentences(16, seed=5)]
    before, _ = _logits(source, texts)
    after, tok = _logits(pruned, texts)
    assert torch.allclose(before, after, atol=1e-5)  # padded batch: the pad id and positions renumbered too
    assert config["pad_token_id"] == tok.pad_token_id
    assert record["accuracy"] == record["input"]["accuracy"]
    slow = AutoTokenizer.from_pretrained(pruned, use_fast=False)  # vocab.txt is the pruned one
    assert slow(texts)["input_ids"] == tok(texts)["input_ids"]
    assert stage_json(run_dir, "02-export_onnx")["parity"]["max_abs_diff"] <= 1e-4


def _tiny_xlmr(path, tokenizer_model: str):
    """A tiny XLM-RoBERTa classifier (positions numbered from the pad id) whose tokenizer is
    trained here on the test sentences: Unigram (as XLM-R's own) or BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizerFast,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    if tokenizer_model == "Unigram":
        backend = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
    else:
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials)
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([t for t, _ in make_sentences(200, seed=9)], trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", backend.token_to_id("</s>")),
                                                          ("<s>", backend.token_to_id("<s>")))
    tok = XLMRobertaTokenizerFast(tokenizer_object=backend)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, num_labels=2,
                              id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    XLMRobertaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_unigram_vocabulary_with_positions_from_the_pad_id(tmp_path):
    source = _tiny_xlmr(tmp_path / "xlmr", "Unigram")
    run_dir = run_tiny(tmp_path, source, "\n  - kind: prune_vocabulary\n    characters: false\n")
    vocab = stage_json(run_dir, "01-prune_vocabulary")["vocabulary"]
    assert vocab["tokenizer_model"] == "Unigram" and vocab["kept_one_character"] == 0
    assert vocab["rows_after"] < vocab["rows_before"]
    texts = [t for t, _ in make_sentences(16, seed=5)]
    before, _ = _logits(source, texts)
    after, tok = _logits(run_dir / "01-prune_vocabulary", texts)
    assert torch.allclose(before, after, atol=1e-5)
    assert tok.convert_ids_to_tokens(tok("good")["input_ids"])[0] == "<s>"


def test_a_word_of_dropped_pieces_splits_into_characters_or_becomes_unknown(tmp_path, tiny_classifier_dir):
    unseen = "zyzzyva quokka"  # not in the test sentences' word list
    for characters in (True, False):
        out = tmp_path / str(characters)
        run_dir = run_tiny(out, tiny_classifier_dir, f"\n  - kind: prune_vocabulary\n    characters: {characters}\n")
        record = stage_json(run_dir, "01-prune_vocabulary")["vocabulary"]
        tok = AutoTokenizer.from_pretrained(run_dir / "01-prune_vocabulary")
        pieces = tok.convert_ids_to_tokens(tok(unseen)["input_ids"])
        if characters:
            assert tok.unk_token not in pieces and "".join(p.lstrip("#") for p in pieces[1:-1]) == "zyzzyvaquokka"
            assert record["kept_one_character"] > 0
        else:
            assert pieces == ["[CLS]", "[UNK]", "[UNK]", "[SEP]"]


def test_bpe_vocabulary_is_refused_and_nothing_is_written(tmp_path):
    source = _tiny_xlmr(tmp_path / "bpe", "BPE")
    with pytest.raises(StageError, match="BPE.*WordPiece and Unigram"):
        run_tiny(tmp_path, source, "\n  - kind: prune_vocabulary\n")
    assert not list((tmp_path / "runs").glob("*/01-prune_vocabulary/config.json"))


def test_causal_lm_recipe_is_refused_at_load(tmp_path):
    text = """
name: lm
model: model
task: causal-lm
data: {train: corpus.txt}
stages:
  - kind: prune_vocabulary
"""
    assert "prune_vocabulary: a causal LM predicts over its whole vocabulary" in recipe_error(tmp_path, text)


def test_min_count_keeps_fewer_rows(tmp_path, tiny_classifier_dir):
    kept = {}
    for min_count in (1, 5):
        run_dir = run_tiny(tmp_path / str(min_count), tiny_classifier_dir,
                           f"\n  - kind: prune_vocabulary\n    min_count: {min_count}\n    characters: false\n")
        kept[min_count] = stage_json(run_dir, "01-prune_vocabulary")["vocabulary"]
    assert kept[5]["kept_seen_in_train"] < kept[1]["kept_seen_in_train"]
    assert kept[5]["rows_after"] < kept[1]["rows_after"]
    assert kept[5]["eval_coverage"]["tokens_kept"] < 1.0 == kept[1]["eval_coverage"]["tokens_kept"]


def test_distill_refuses_a_teacher_with_another_vocabulary(tmp_path, tiny_classifier_dir):
    stages = ("\n  - kind: prune_vocabulary\n  - kind: distill\n    teacher: model\n    keep_layers: [0]\n"
              "    max_steps: 1\n    batch_size: 8\n")
    with pytest.raises(StageError, match=r"distill.teacher: its vocabulary \(30522 tokens\) is not the incoming"):
        run_tiny(tmp_path, tiny_classifier_dir, stages)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tiny_classifier_dir):
    import shutil

    source = tmp_path / "small-table"
    shutil.copytree(tiny_classifier_dir, source)
    net = AutoModelForSequenceClassification.from_pretrained(source)
    net.resize_token_embeddings(30000)
    net.save_pretrained(source)
    with pytest.raises(StageError, match="has 30522 tokens but the model's word embedding only 30000 rows"):
        run_tiny(tmp_path, source, "\n  - kind: prune_vocabulary\n")
