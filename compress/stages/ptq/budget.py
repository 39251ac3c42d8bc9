"""The metric budget of a quantization (the run's metric: accuracy, entity F1, SQuAD F1):
when the INT8 model loses more of it than `max_metric_drop`, find the layers that cost the
most and keep them in float.

Sensitivity of a layer = how far the logits move (mean |difference| against the float
model, on the budget slice) when that layer alone is quantized: a continuous score, so
the order is stable even where slice accuracy ties. Layers are then excluded from
quantization, most sensitive first, until the budget holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from compress.errors import StageError

log = logging.getLogger(__name__)

EPSILON = 1e-9  # accuracy is a ratio of counts: compare drops with a little slack for float error


@dataclass
class BudgetResult:
    excluded: list[str]  # nodes kept in float, pinned ones included
    accuracy: float  # quantized accuracy on the budget slice
    attempts: list[dict] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)

    def record(self, reference: float, max_drop: float, examples: int, pinned: list[str]) -> dict:
        chosen = [n for n in self.excluded if n not in pinned]
        top = dict(sorted(self.sensitivity.items(), key=lambda kv: -kv[1])[:10])
        return {
            "max_accuracy_drop": max_drop,
            "slice_examples": examples,
            "reference_accuracy": round(reference, 5),
            "quantized_accuracy": round(self.accuracy, 5),
            "drop": round(reference - self.accuracy, 5),
            "met": reference - self.accuracy <= max_drop + EPSILON,
            "searched": bool(self.sensitivity),
            "excluded_by_search": chosen,
            "nodes_to_exclude": self.excluded,  # paste into the recipe to pin this choice
            "attempts": self.attempts,
            "sensitivity_top": {k: round(v, 6) for k, v in top.items()},
        }


def mean_abs_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean |a - b| over every number of two models' per-feature outputs."""
    return float(np.abs(np.concatenate([x.ravel() for x in a]) - np.concatenate([y.ravel() for y in b])).mean())


def task_score(task, features: list[dict], references: list, metric: str | None = None) -> Callable[[list], float]:
    """The task's metric (default: its primary one) of a model's outputs on the budget slice
    (higher is better)."""
    return lambda outputs: task.metrics(outputs, features, references)[metric or task.primary_metric]


def fit_accuracy_budget(
    logits_with: Callable[[list[str], list[str] | None], list[np.ndarray]],
    reference_logits: list[np.ndarray],
    score: Callable[[list[np.ndarray]], float],
    candidates: list[str],
    pinned: list[str],
    max_drop: float,
) -> BudgetResult:
    """logits_with(nodes_to_exclude, nodes_to_quantize) quantizes the float model that way
    and returns its logits on the budget slice; score(logits) is the task's metric on the slice. Raises StageError (with the best reached)
    when even excluding every candidate misses the budget."""
    reference = score(reference_logits)
    attempts = []

    def attempt(excluded: list[str]) -> float:
        acc = score(logits_with(excluded, None))
        attempts.append({"excluded": len(excluded), "accuracy": round(acc, 5)})
        log.info("budget: %d nodes in float -> accuracy %.4f (reference %.4f)", len(excluded), acc, reference)
        return acc

    first = attempt(list(pinned))
    if reference - first <= max_drop + EPSILON:
        return BudgetResult(list(pinned), first, attempts)

    from compress.progress import progress_bar

    free = [c for c in candidates if c not in pinned]
    sensitivity = {}
    # one quantization and evaluation per layer: minutes on a big model
    with progress_bar("ptq budget: sensitivity per layer", total=len(free)) as bar:
        for name in free:  # one quantization per layer, the rest float
            bar.describe(f"ptq budget: sensitivity of {name}")
            diff = mean_abs_difference(logits_with(list(pinned), [name]), reference_logits)
            sensitivity[name] = float(diff)
            bar.advance()
    order = sorted(free, key=lambda n: -sensitivity[n])
    log.info("budget: most sensitive layers: %s", ", ".join(order[:5]))

    best = BudgetResult(list(pinned), first, attempts, sensitivity)
    excluded = list(pinned)
    # at most one attempt per layer; the bar vanishes early when the budget holds
    with progress_bar("ptq budget: layers kept in float", total=len(order)) as bar:
        for name in order:
            excluded.append(name)
            acc = attempt(excluded)
            bar.advance()
            if acc > best.accuracy:
                best = BudgetResult(list(excluded), acc, attempts, sensitivity)
            if reference - acc <= max_drop + EPSILON:
                return BudgetResult(list(excluded), acc, attempts, sensitivity)
    raise StageError(
        f"max_metric_drop {max_drop:g} not reached: the float model scores {reference:.4f} on the "
        f"budget slice ({len(reference_logits)} features) and the best INT8 model {best.accuracy:.4f} "
        f"(drop {reference - best.accuracy:.4f}, with {len(best.excluded)} of {len(candidates)} layers in float: "
        f"{_shorten(best.excluded)}); raise max_metric_drop or try per_channel / another calibration"
    )


def _shorten(names: list[str], keep: int = 5) -> str:
    return ", ".join(names[:keep]) + (f" and {len(names) - keep} more" if len(names) > keep else "") or "none"
