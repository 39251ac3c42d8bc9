"""Tasks: what a model does, and everything that depends on it. A recipe's `task:` names
one module here (`text-classification` ↔ tasks/text_classification.py); training,
evaluation, export, the benchmark and the deploy-time runtime ask it instead of assuming
labels and argmax. Adding a task means adding one module that defines `TASK`.

Light on purpose: numpy at most at module level (the deploy-time runtime imports tasks)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np


class Task(Protocol):
    name: str  # the recipe's `task:` value, e.g. "text-classification"
    optimum_task: str  # optimum's exporter task name
    primary_metric: str  # the metric the ledger, keep_best and budgets compare (higher is better)
    metric_names: tuple[str, ...]  # what metrics() returns besides the example count
    head: str  # the transformers auto class of the task's head

    def labels_of(self, path: Path) -> list[str] | None:
        """The labels a checkpoint already predicts for this task, or None (e.g. a base model)."""

    def load_model(self, path: Path, labels: list[str], trust_remote_code: bool = False) -> Any:
        """The torch model with the task's head, sized for `labels`."""

    def encode(self, tokenizer, dataset, max_length: int) -> list[dict]:
        """Unpadded examples: the tokenizer's inputs plus what the loss needs (e.g. "label")."""

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        """Pads encoded examples into a batch of torch tensors (the loss targets under "labels")."""

    def references(self, dataset) -> list:
        """What the metrics compare outputs against, one per example."""

    def metrics(self, outputs: np.ndarray, references: list) -> dict[str, float]:
        """The task's metrics (primary_metric among them) and the example count."""

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
        """How often two models' task outputs (not raw numbers) are the same."""

    def postprocess(self, outputs: np.ndarray, labels: list[str]) -> list[dict]:
        """Predictions for people and services (the deploy-time Predictor): numpy only."""


def rounded(metrics: dict) -> dict:
    """A task's metrics as a record keeps them: floats to 5 decimals, counts as they are."""
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}


def task_modules() -> list[str]:
    """Module names under compress/tasks, one per task."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def task_names() -> list[str]:
    return [name.replace("_", "-") for name in task_modules()]


def get_task(name: str) -> Task:
    """The task a recipe names; ValueError (one line, with the known names) otherwise."""
    module = name.replace("-", "_")
    if module not in task_modules():
        raise ValueError(f"task '{name}' is not supported yet (supported: {', '.join(task_names())})")
    return importlib.import_module(f"{__name__}.{module}").TASK
