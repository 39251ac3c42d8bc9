"""Output parity between two artifacts on real eval inputs: the check that an export
or a graph rewrite did not change the model.

A float rewrite must keep the logits within a fixed float tolerance. A quantized graph
cannot: torch's fake quantization and ONNX Runtime's INT8 kernels (or a fused graph's
reordered float work between rounding points) may land a value on a neighbouring
quantization level. Its criterion is read from the graph itself (`quantized_criterion`):
task outputs agree on at least `min_agreement` of the parity samples, and no logit moves
by more than `steps` quantization steps of the last quantized MatMul's input
(`onnx_graph.output_step`). stage.json records the criterion and the observed distribution
(max, p99, mean |difference|, agreement, and the max in steps)."""

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
    return {"max_abs_diff": float(diff.max()), "p99_abs_diff": float(np.percentile(diff, 99)),
            "mean_abs_diff": float(diff.mean()), **rounded(task.agreement(reference, candidate, features))}


def describe_agreement(compared: dict) -> str:
    """The *_agreement shares of a comparison for a failure message, e.g. 'label agreement 98.00%'."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.2%}" for k, v in compared.items() if k.endswith("agreement")
                     and k != "min_agreement")


def agreement_of(compared: dict) -> float:
    """The lowest task-output agreement share of a comparison (1.0 when the task reports none)."""
    return min((v for k, v in compared.items() if k.endswith("_agreement") and k != "min_agreement"), default=1.0)


def quantized_criterion(onnx_path, steps: float, min_agreement: float, what: str) -> dict:
    """The parity criterion of a static Q/DQ graph: atol = steps × the logit step of its last
    quantized MatMul (activation scale × the weight's largest column L1 norm). `what` names
    the recipe field to set when the graph has no static activation scale to read."""
    from compress.onnx_graph import output_step

    step = output_step(onnx_path)
    if step is None:
        raise StageError(f"{onnx_path}: no static activation scale at its last quantized MatMul to derive a "
                         f"logit tolerance from (dynamic quantization?); set {what}")
    return {"atol": steps * step["logit_step"], "min_agreement": min_agreement,
            "atol_from": {"steps": steps, **step}}


def judge(compared: dict, atol: float, min_agreement: float | None = None,
          atol_from: dict | None = None) -> dict:
    """The comparison with its criterion and verdict: `passed`, and `failure` (one line) when not."""
    result = {**compared, "atol": atol}
    if min_agreement is not None:
        result["min_agreement"] = min_agreement
    if atol_from is not None:
        result["atol_from"] = atol_from
        if atol_from.get("logit_step"):
            result["max_abs_diff_steps"] = round(compared["max_abs_diff"] / atol_from["logit_step"], 4)
    problems = []
    if compared["max_abs_diff"] > atol:
        problems.append(f"max |logit difference| {compared['max_abs_diff']:.3g} > atol {atol:.3g}")
    if min_agreement is not None and agreement_of(compared) < min_agreement:
        problems.append(f"agreement {agreement_of(compared):.2%} < min_agreement {min_agreement:.2%}")
    result["passed"] = not problems
    if problems:
        result["failure"] = "; ".join(problems)
    return result


def check_parity(reference: Artifact, candidate: Artifact, ctx, atol: float, samples: int,
                 min_agreement: float | None = None, atol_from: dict | None = None) -> dict:
    encoded = ctx.encoded_eval(reference, samples)
    threads = ctx.measure.threads
    ref = predict_outputs(open_session(reference, threads), encoded, 16, "parity (reference)")
    cand = predict_outputs(open_session(candidate, threads), encoded, 16, "parity (candidate)")
    result = {**judge(compare_outputs(ref, cand, ctx.task, encoded), atol, min_agreement, atol_from),
              "examples": len(encoded)}
    if not result["passed"]:
        ctx.record(parity=result)
        raise StageError(f"parity check failed: {result['failure']} on {len(encoded)} eval examples "
                         f"({describe_agreement(result)})")
    return result
