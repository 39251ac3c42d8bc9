"""distill's `augment:` (compress.augmentation): altered, unlabelled copies of the training
features, which the teacher labels. The copies keep their structure (special tokens, text
pairs, per-token lists), differ from their originals, carry no label, and are the same for
the same seed; the stage trains on them; tasks that cannot take them are refused by name."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from compress.augmentation import AugmentSpec, augmented_features
from compress.distillation import DistillationModule, DistillationObjective
from compress.tasks import get_task
from tests.conftest import tiny_recipe_text
from tests.helpers import recipe_error, run_tiny, stage_json

CLS, SEP, MASK, PAD = 101, 102, 103, 0
SPECIAL = {CLS, SEP, MASK, PAD}
CLASSIFICATION = get_task("text-classification")


def single(ids: list[int], label: int) -> dict:
    return {"input_ids": [CLS, *ids, SEP], "attention_mask": [1] * (len(ids) + 2),
            "token_type_ids": [0] * (len(ids) + 2), "label": label}


def pair(a: list[int], b: list[int], label: int) -> dict:
    ids = [CLS, *a, SEP, *b, SEP]
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1), "label": label}


def features(n: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [int(w) for w in rng.integers(1000, 1050, size=int(rng.integers(6, 15)))]
        out.append(single(words, i % 2) if i % 4 else pair(words[:4], words[4:], i % 2))
    return out


def augment(feats, seed=3, **spec):
    return augmented_features(feats, AugmentSpec(**{"copies": 2, **spec}), SPECIAL, MASK,
                              CLASSIFICATION.unlabelled, seed)


def test_copies_follow_the_originals_unlabelled_and_altered():
    feats = features()
    out = augment(feats)
    assert len(out) == 3 * len(feats) and out[: len(feats)] == feats  # originals first, untouched
    vocab = {t for f in feats for t in f["input_ids"]} - SPECIAL
    cropped = 0
    for k, copy in enumerate(out[len(feats):]):
        original = feats[k % len(feats)]
        assert copy["label"] == -100  # no label: the label loss skips it, the teacher labels it
        n = len(copy["input_ids"])
        assert len(copy["attention_mask"]) == len(copy["token_type_ids"]) == n
        assert copy["input_ids"][0] == CLS and copy["input_ids"][-1] == SEP
        assert all(t in vocab or t == MASK for t in copy["input_ids"][1:-1] if t != SEP)
        if n == len(original["input_ids"]):  # not cropped: same frame, some tokens replaced
            assert copy["input_ids"] != original["input_ids"]
            assert [i for i, t in enumerate(copy["input_ids"]) if t == SEP] == \
                   [i for i, t in enumerate(original["input_ids"]) if t == SEP]
            assert copy["token_type_ids"] == original["token_type_ids"]
        else:  # cropped: a single text only, at least half of its words kept
            cropped += 1
            assert original["input_ids"].count(SEP) == 1
            assert n - 2 >= (len(original["input_ids"]) - 2) / 2
    assert 0 < cropped < len(out) - len(feats)


def test_a_text_pair_is_never_cropped_and_crop_false_crops_nothing():
    feats = features()
    for copy in augment(feats)[len(feats):]:
        if 1 in copy["token_type_ids"]:
            assert copy["input_ids"].count(SEP) == 2
    kept = augment(feats, crop=False)
    assert [len(c["input_ids"]) for c in kept[len(feats):]] == [len(f["input_ids"]) for f in feats] * 2


def test_the_same_seed_makes_the_same_transfer_set():
    feats = features()
    assert augment(feats, seed=5) == augment(feats, seed=5)
    assert augment(feats, seed=5) != augment(feats, seed=6)


def test_token_fraction_sets_how_much_of_a_copy_changes():
    feats = features(200)

    def changed(fraction):
        copies = augment(feats, token_fraction=fraction, crop=False)[len(feats):]
        diffs = [np.mean(np.array(c["input_ids"]) != np.array(f["input_ids"]))
                 for c, f in zip(copies, feats * 2)]
        return float(np.mean(diffs))

    # a replacement can draw the token it replaces, so the share changed is a little under the fraction
    assert 0.05 < changed(0.1) < changed(0.5)
    assert changed(0.5) < 0.5


def test_per_token_labels_are_cleared_with_the_tokens():
    ner = get_task("token-classification")
    feats = [{**single([1000 + i, 1001, 1002, 1003, 1004], 0), "labels": [-100, 1, 0, 2, 0, 0, -100],
              "word_ids": [None, 0, 1, 2, 3, 4, None]} for i in range(8)]
    for f in feats:
        del f["label"]
    out = augmented_features(feats, AugmentSpec(copies=1), SPECIAL, MASK, ner.unlabelled, 0)
    for copy in out[8:]:
        assert copy["labels"] == [-100] * len(copy["input_ids"])
        assert len(copy["word_ids"]) == len(copy["input_ids"])


def test_a_batch_of_copies_only_has_a_zero_label_part_not_nan():
    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3))
            self.config = type("C", (), {"hidden_size": 4})()

        def forward(self, input_ids, attention_mask, labels=None):
            logits = self.w.expand(len(input_ids), 3)
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return type("O", (), {"logits": logits, "loss": loss})()

    module = DistillationModule(Student(), DistillationObjective(label_weight=0.5), CLASSIFICATION)
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([-100, -100])}
    out = module(batch, torch.randn(2, 3))
    assert float(out["label"]) == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()  # the soft-target part still teaches
    batch["labels"] = torch.tensor([-100, 2])  # one labelled row: the label part is its loss alone
    assert float(module(batch, torch.randn(2, 3))["label"]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(module.student.w.detach().expand(1, 3), torch.tensor([2]))))


TRAIN = "\n    max_steps: 20\n    batch_size: 8\n    learning_rate: 3.0e-3\n    warmup_ratio: 0.0\n"


@pytest.mark.parametrize("cache", [False, True])
def test_distill_trains_on_the_augmented_transfer_set(tmp_path, tiny_classifier_dir, cache):
    stages = "\n  - kind: distill\n    every: 2\n    augment: {copies: 2}\n" + (
        "    cache_teacher: true\n" if cache else "") + TRAIN
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "01-distill")
    aug = record["augmentation"]
    assert aug["copies"] == 2 and aug["transfer_set"] == 3 * aug["original_examples"] > 0
    loss = record["distillation_loss"]
    assert loss["probe_examples"] == min(64, aug["original_examples"])  # originals only
    assert np.isfinite(record["training"]["final_loss"]) and loss["after"] < loss["before"], loss


@pytest.mark.parametrize("body, pattern", [
    ("augment: {copies: 0}", r"stages\[0\]\.augment\.copies: Input should be greater than or equal to 1"),
    ("augment: {copies: 1, token_fraction: 0}", r"stages\[0\]\.augment\.token_fraction: Input should be greater"),
    ("augment: {copies: 1, mask: true}", r"stages\[0\]\.augment\.mask: unknown field"),
    ("augment: {copies: 1}\n    distillation: {soft_target_weight: 0, label_weight: 1}",
     r"stages\[0\]: distill: augment makes text without labels, which only the teacher can label"),
])
def test_bad_augment_config_is_one_line_naming_the_field(recipe_dir, body, pattern):
    message = recipe_error(recipe_dir, tiny_recipe_text(stages=f"\n  - kind: distill\n    every: 2\n    {body}\n"))
    assert re.search(pattern, message), message


@pytest.mark.parametrize("task", ["question-answering", "causal-lm"])
def test_augment_is_refused_for_tasks_whose_targets_it_cannot_clear(tmp_path, tiny_base_dir, task):
    shutil.copytree(tiny_base_dir, tmp_path / "model")
    text = (f"name: t\nmodel: model\ntask: {task}\ndata:\n  train: x.jsonl\nstages:\n"
            "  - kind: distill\n    every: 2\n    augment: {copies: 1}\n")
    message = recipe_error(tmp_path, text)
    assert re.search(rf"stages\[0\] \(distill\)\.augment: not for {task} \(text and token classification only\)",
                     message), message
