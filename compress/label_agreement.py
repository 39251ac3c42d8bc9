"""Two models' labels on the same eval examples, compared example by example: how often they
agree, which examples only one of them gets right, and whether their accuracies differ by more
than chance would (McNemar's exact test). The pipeline compares each stage with its input this
way (the ledger's 'labels vs input'), the benchmark each model with its fp32 reference."""

from __future__ import annotations

import math


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under 'equally accurate', each of the n examples that
    exactly one model gets right is that model's with probability 1/2 (a binomial(n, 1/2) tail)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_labels(reference: list, predictions: list, truth: list) -> dict:
    """Two models' labels on the same examples: agreement, the examples only one of them gets
    right, and McNemar's exact p for 'equally accurate'."""
    only_ref = sum(r == t != p for r, p, t in zip(reference, predictions, truth))
    only_model = sum(p == t != r for r, p, t in zip(reference, predictions, truth))
    return {"examples": len(truth), "agreement": round(sum(r == p for r, p in zip(reference, predictions)) / len(truth), 6),
            "only_reference_right": only_ref, "only_model_right": only_model,
            "mcnemar_p": round(mcnemar_p(only_ref, only_model), 6)}
