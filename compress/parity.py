"""Output parity between two artifacts on real eval inputs: the check that an export
or a graph rewrite did not change the model."""

from __future__ import annotations

import numpy as np

from compress.artifacts import Artifact
from compress.errors import StageError
from compress.evaluate import predict_outputs
from compress.sessions import open_session


def compare_outputs(reference: list[np.ndarray], candidate: list[np.ndarray], task, features: list[dict]) -> dict:
    """How far two models' raw outputs (one array per feature) are apart, and how often their
    task outputs agree."""
    from compress.tasks import rounded

    diff = np.abs(np.concatenate([r.astype(np.float64).ravel() for r in reference])
                  - np.concatenate([c.astype(np.float64).ravel() for c in candidate]))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            **rounded(task.agreement(reference, candidate, features))}


def describe_agreement(compared: dict) -> str:
    """The *_agreement shares of a comparison for a failure message, e.g. 'label agreement 98.00%'."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.2%}" for k, v in compared.items() if k.endswith("agreement"))


def check_parity(reference: Artifact, candidate: Artifact, ctx, atol: float, samples: int) -> dict:
    encoded = ctx.encoded_eval(reference, samples)
    threads = ctx.measure.threads
    ref = predict_outputs(open_session(reference, threads), encoded, 16, "parity (reference)")
    cand = predict_outputs(open_session(candidate, threads), encoded, 16, "parity (candidate)")
    result = {**compare_outputs(ref, cand, ctx.task, encoded), "atol": atol, "examples": len(encoded)}
    if result["max_abs_diff"] > atol:
        agreement = describe_agreement(result)
        raise StageError(
            f"parity check failed: max |logit difference| {result['max_abs_diff']:.3g} > atol {atol:g} "
            f"on {len(encoded)} eval examples ({agreement})"
        )
    return result
