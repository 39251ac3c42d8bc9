"""Two models' predictions on the same eval examples, compared example by example: how often
they agree, which examples only one of them gets right, and whether their accuracies differ by
more than chance would (McNemar's exact test). A difference of a few examples in 1,281 is what
two INT8 graphs of one model differ by; the test says when it is more than that."""

from __future__ import annotations

import math

from compress.bench.plan import BASELINE
from compress.markdown import md_table


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under 'equally accurate', each of the n examples that
    exactly one model gets right is that model's with probability 1/2 (a binomial(n, 1/2) tail)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_predictions(reference: dict, row: dict) -> dict | None:
    """Agreement and McNemar of a row's predictions against a reference row's, or None where
    either has none or they were made on different examples (references differ)."""
    ref_pred, pred = reference.get("predictions"), row.get("predictions")
    if not ref_pred or not pred or reference.get("references") != row.get("references"):
        return None
    truth = row["references"]
    only_ref = sum(r == t != p for r, p, t in zip(ref_pred, pred, truth))
    only_row = sum(p == t != r for r, p, t in zip(ref_pred, pred, truth))
    return {"examples": len(truth), "agreement": sum(r == p for r, p in zip(ref_pred, pred)) / len(truth),
            "only_reference_right": only_ref, "only_model_right": only_row, "mcnemar_p": mcnemar_p(only_ref, only_row)}


def reference_of(rows: list[dict], row: dict) -> dict | None:
    """The row's fp32 reference with predictions on the same target kind: its ONNX Runtime fp32
    reference, else its torch baseline (rows from with_speedups name both)."""
    for key in ("ort_fp32_reference", "baseline_reference"):
        name = row.get(key)
        ref = next((r for r in rows if r["model"] == name and r.get("predictions")), None)
        if ref is not None and name != row["model"]:
            return ref
    return None


def comparison_rows(rows: list[dict], against: str | None = None) -> list[dict]:
    """One entry per (model, target) with predictions: the model against its fp32 reference
    (the torch baseline is every other model's reference, not compared itself), or against the
    model named `against` on the same target."""
    out = []
    for row in rows:
        if against is not None:
            ref = next((r for r in rows if r["model"] == against and r["target"] == row["target"]
                        and r.get("predictions") and row["model"] != against), None)
        else:
            ref = reference_of(rows, row) if row.get("role") != BASELINE else None
        ref = ref if row.get("predictions") else None
        found = compare_predictions(ref, row) if ref else None
        if found:
            out.append({"model": row["model"], "target": row["target"], "reference": ref["model"], **found})
    return out


def comparison_table(rows: list[dict], against: str | None = None) -> str:
    """The comparisons as a Markdown table ('' when no row has predictions to compare)."""
    found = comparison_rows(rows, against)
    if not found:
        return ""
    body = [[c["model"], c["target"], c["reference"], f"{c['agreement']:.4f}",
             f"{c['only_model_right'] - c['only_reference_right']:+d}",
             f"{c['only_model_right']} / {c['only_reference_right']}", f"{c['mcnemar_p']:.3f}"] for c in found]
    return md_table(["model", "target", "reference" if against else "fp32 reference", "agreement", "net examples vs reference",
                     "only model right / only reference right", "McNemar p"], body)
