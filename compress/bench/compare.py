"""Benchmark rows compared example by example (compress.label_agreement): each model with its
fp32 reference, or with a named model, on the same eval examples. A difference of a few
examples in 1,281 is what two INT8 graphs of one model differ by; McNemar's p says when an
accuracy difference is more than that."""

from __future__ import annotations

from compress.bench.plan import BASELINE
from compress.label_agreement import compare_labels
from compress.markdown import md_table


def compare_predictions(reference: dict, row: dict) -> dict | None:
    """compare_labels of two bench rows, or None where either has no predictions or they were
    made on different examples (references differ)."""
    ref_pred, pred = reference.get("predictions"), row.get("predictions")
    if not ref_pred or not pred or reference.get("references") != row.get("references"):
        return None
    return compare_labels(ref_pred, pred, row["references"])


def reference_of(rows: list[dict], row: dict) -> dict | None:
    """The row's fp32 reference with predictions on the same target kind: its ONNX Runtime fp32
    reference, else its torch baseline (rows from with_speedups name both)."""
    for key in ("ort_fp32_reference", "baseline_reference"):
        name = row.get(key)
        ref = next((r for r in rows if r["model"] == name and r.get("predictions")), None) if name != row["model"] else None
        if ref is not None:
            return ref
    return None


def comparison_rows(rows: list[dict], against: str | None = None) -> list[dict]:
    """One entry per (model, target) with predictions: the model against its fp32 reference
    (the torch baseline is every other model's reference, not compared itself), or against the
    model named `against` on the same target."""
    out = []
    for row in rows:
        if not row.get("predictions") or row["model"] == against or (against is None and row.get("role") == BASELINE):
            continue
        if against is not None:
            ref = next((r for r in rows if r["model"] == against and r["target"] == row["target"]
                        and r.get("predictions")), None)
        else:
            ref = reference_of(rows, row)
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
