"""A larger transfer set for distillation, in the manner of TinyBERT's data augmentation:
each training feature gets `copies` altered copies (some of its tokens masked or swapped
for tokens drawn from the training text's own unigram distribution; half the copies of a
single text cut to a random span of at least half its tokens). The copies carry no labels:
the teacher labels them through the distillation loss (soft targets, hidden states), which
is what lets a student learn more of the teacher's function than the labelled set shows.

Works on token ids, so it needs no extra model or word list and stays offline. numpy only."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AugmentSpec(BaseModel):
    """distill's `augment:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    copies: int = Field(ge=1, le=32, description="Altered copies per training example (the transfer set grows "
                                                 "to 1 + copies times the training set; so does an epoch).")
    token_fraction: float = Field(0.15, gt=0, le=0.8, description="Share of a copy's tokens (special tokens "
                                  "never) replaced: half by the mask token where the tokenizer has one, the rest "
                                  "by tokens drawn from the training text's unigram distribution.")
    crop: bool = Field(True, description="Half the copies of a single text (not a text pair) keep only a random "
                                         "contiguous span of at least half of its tokens.")


def augmented_features(features: list[dict], spec: AugmentSpec, special_ids: set[int], mask_id: int | None,
                       unlabelled: Callable[[dict], dict], seed: int) -> list[dict]:
    """The features followed by spec.copies altered, unlabelled copies of each (copy c of
    every feature, then copy c + 1). Deterministic in seed, so every process of a
    distributed run builds the same set."""
    rng = np.random.default_rng([seed, 0xA06])
    special = np.fromiter(special_ids, dtype=np.int64, count=len(special_ids))
    vocab, weights = _unigram(features, special)
    out = list(features)
    for _ in range(spec.copies):
        for feature in features:
            out.append(unlabelled(_altered(feature, spec, special, mask_id, vocab, weights, rng)))
    return out


def _unigram(features: list[dict], special: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([np.asarray(f["input_ids"], dtype=np.int64) for f in features])
    vocab, counts = np.unique(ids[~np.isin(ids, special)], return_counts=True)
    return vocab, counts / max(1, counts.sum())


def _altered(feature: dict, spec: AugmentSpec, special: np.ndarray, mask_id: int | None, vocab: np.ndarray,
             weights: np.ndarray, rng: np.random.Generator) -> dict:
    ids = np.asarray(feature["input_ids"], dtype=np.int64)
    n = len(ids)
    # every per-token list travels with the tokens (attention_mask, token_type_ids, per-token labels)
    per_token = [k for k, v in feature.items() if isinstance(v, (list, np.ndarray)) and len(v) == n]
    content = np.flatnonzero(~np.isin(ids, special))
    keep = np.arange(n)
    if spec.crop and len(content) >= 4 and _single_text(ids, content, n) and rng.random() < 0.5:
        span = int(rng.integers(math.ceil(len(content) / 2), len(content) + 1))
        start = int(rng.integers(0, len(content) - span + 1))
        keep = np.concatenate([[0], content[start : start + span], [n - 1]])
        content = np.arange(1, 1 + span)
    new = {k: (list(np.asarray(v)[keep]) if k in per_token else v) for k, v in feature.items()}
    new_ids = np.asarray(new["input_ids"], dtype=np.int64)
    if len(content) and len(vocab):
        chosen = content[rng.random(len(content)) < spec.token_fraction]
        if not len(chosen):  # every copy differs from its original in at least one token
            chosen = rng.choice(content, size=1)
        masked = rng.random(len(chosen)) < 0.5 if mask_id is not None else np.zeros(len(chosen), dtype=bool)
        if mask_id is not None:
            new_ids[chosen[masked]] = mask_id
        new_ids[chosen[~masked]] = rng.choice(vocab, size=int((~masked).sum()), p=weights)
    new["input_ids"] = [int(i) for i in new_ids]
    for k in per_token:
        if k != "input_ids":
            new[k] = [int(v) if v is not None else None for v in new[k]]
    return new


def _single_text(ids: np.ndarray, content: np.ndarray, n: int) -> bool:
    """One text framed by exactly one special token on each side ([CLS] ... [SEP]): a text
    pair has a separator inside, which a crop could cut away."""
    return len(content) == n - 2 and content[0] == 1 and content[-1] == n - 2
