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

IGNORED = -100  # a target the loss skips (torch's cross_entropy ignore_index): padding, sub-tokens, augmented text


class Task(Protocol):
    name: str  # the recipe's `task:` value, e.g. "text-classification"
    optimum_task: str  # optimum's exporter task name
    primary_metric: str  # the default metric the ledger, keep_best and budgets compare
    # Optional: `lower_is_better`, a set of metric names (causal-lm's perplexity); every other
    # metric is higher-is-better. Ask is_lower_better(), never the attribute directly.
    metric_names: tuple[str, ...]  # the scalar metrics metrics() returns (a recipe's `metric:` picks one)
    head: str  # the transformers auto class of the task's head
    output_names: tuple[str, ...]  # the model's outputs, in order (ONNX output names)
    target_keys: tuple[str, ...]  # batch keys the model's own loss takes (e.g. "labels")
    distribution_axis: int  # the axis of an example's output that softmax / distillation runs over
    data_columns: tuple[str, ...]  # DataSpec fields naming the columns a file must have
    labelled: bool  # predicts from a label set (data.labels applies)
    usage: tuple[str, str]  # a Predictor.predict call's arguments and what it returns, for model cards

    # --- data: rows of a file -> a dataset with `rows` (source line numbers), __len__, subset(idx)
    def dataset_from_rows(self, numbered: list[tuple[int, dict]], spec, origin: str):
        """The task's dataset from (line, row) pairs, labels still as strings. DataError (one line
        naming origin and line) for a row the task cannot take."""

    def label_set(self, dataset) -> list[str] | None:
        """Label names in id order found in a (string-labelled) train dataset; None: no labels."""

    def with_label_ids(self, dataset, names: list[str] | None, origin: str):
        """The dataset with its labels as ids into names; DataError for an unknown label."""

    def check_splits(self, train, eval_, names, train_origin: str, eval_origin: str, spec) -> None:
        """The task's data contract on the split (DataError, one line)."""

    # --- model
    def labels_of(self, path: Path) -> list[str] | None:
        """The labels a checkpoint already predicts for this task, or None (e.g. a base model)."""

    def is_trained_for(self, path: Path, labels: list[str] | None) -> bool:
        """The checkpoint already has this task's head, for these labels (it does the task)."""

    def load_model(self, path: Path, labels: list[str] | None, trust_remote_code: bool = False) -> Any:
        """The torch model with the task's head, sized for `labels`."""

    # --- features
    def encode(self, tokenizer, dataset, max_length: int) -> list[dict]:
        """Features: unpadded model inputs, the loss targets (target_keys) and whatever metrics
        need to map a feature's output back to its example (keys other than the model's inputs
        and targets are never fed to a model)."""

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        """Pads features into a batch of torch tensors: model inputs plus target_keys."""

    def references(self, dataset) -> list:
        """What the metrics compare outputs against, one per example."""

    # Optional: unlabelled(feature) -> the feature with its targets set to be ignored by the
    # loss; a task with it can distill on augmented text (compress.augmentation).

    # --- outputs: one numpy array per feature: (labels,) for a sequence, (tokens, labels) per
    # token, (tokens, 2) for start/end logits; token-level outputs are trimmed to the feature's tokens
    def metrics(self, outputs: list[np.ndarray], features: list[dict], references: list) -> dict:
        """The task's metrics (every metric_names entry, plus details such as per-type scores)
        and the example count."""

    # Optional: reduce_outputs(batch_outputs, batch, lengths) -> one array per example, run on
    # each batch right after the session returns it (see per_example_outputs); metrics() then
    # takes those arrays. causal-lm reduces (tokens, vocab) logits to per-token NLL this way.

    # Optional: example_predictions(outputs, features) -> each example's predicted class, where
    # an example is simply right or wrong (classification): the benchmark then compares two
    # models example by example (agreement, McNemar's test: compress.label_agreement), the
    # ledger each stage with its input, the benchmark each model with its fp32 reference.

    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray], features: list[dict]) -> dict:
        """How often two models' task outputs (not raw numbers) are the same (keys end in _agreement)."""

    def postprocess(self, outputs: list[np.ndarray], features: list[dict], texts: list[str],
                    pairs: list[str] | None, labels: list[str] | None) -> list[dict]:
        """Predictions for people and services (the deploy-time Predictor), one per text: numpy only."""

    def runtime_inputs(self, dataset) -> tuple[list[str], list[str] | None]:
        """A dataset as a service would send it to the Predictor: (texts, text pairs or None)."""

    def runtime_features(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> list[dict]:
        """`encode`'s features built with the light `tokenizers.Tokenizer` (no transformers), for
        the deploy-time Predictor; raises ValueError (one line) for input the task cannot take."""


def split_rows(batch_outputs: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """One output array per example of a padded batch: a per-token output (batch, tokens, ...)
    is trimmed to the example's own tokens, a per-sequence one (batch, labels) is left whole."""
    if batch_outputs.ndim >= 3:
        return [row[:n] for row, n in zip(batch_outputs, lengths)]
    return list(batch_outputs)


def per_example_outputs(task, batch_outputs: np.ndarray, batch: dict, lengths: list[int]) -> list[np.ndarray]:
    """One output array per example of a padded batch, as the task's metrics take them: the
    task's reduce_outputs where it has one (so large per-token outputs, such as a language
    model's logits, never outlive their batch), else split_rows."""
    reduce = getattr(task, "reduce_outputs", None) if task is not None else None
    return reduce(batch_outputs, batch, lengths) if reduce else split_rows(batch_outputs, lengths)


def is_lower_better(task, metric: str) -> bool:
    """Whether a smaller value of `metric` is better (perplexity); metrics are higher-is-better
    unless the task lists them in `lower_is_better`."""
    return metric in getattr(task, "lower_is_better", ())


def is_better(task, metric: str, value: float, than: float) -> bool:
    return value < than if is_lower_better(task, metric) else value > than


def combine_outputs(arrays: list[np.ndarray]) -> np.ndarray:
    """A model's numpy outputs as one array: a single output as it is, several (start and end
    logits) stacked on a new last axis."""
    import numpy as np

    return arrays[0] if len(arrays) == 1 else np.stack(arrays, -1)


def torch_outputs(model_output, task: Task):
    """combine_outputs for a transformers model call: the task's outputs as one tensor."""
    tensors = [getattr(model_output, name) for name in task.output_names]
    if len(tensors) == 1:
        return tensors[0]
    import torch

    return torch.stack(tensors, -1)


def saved_architectures(path: Path) -> list[str]:
    """The model classes a checkpoint's config.json says it was saved as."""
    import json

    return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("architectures") or []


def saved_labels(path: Path, head_suffix: str) -> list[str] | None:
    """The label names in id order of a checkpoint saved with a `*{head_suffix}` head (e.g.
    "ForTokenClassification"); None for any other checkpoint (a base model, another task)."""
    import json

    cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    id2label = cfg.get("id2label")
    if not id2label or not any(a.endswith(head_suffix) for a in cfg.get("architectures") or []):
        return None
    return [id2label[str(i)] for i in range(len(id2label))]


def rounded(metrics: dict) -> dict:
    """A task's metrics as a record keeps them: floats to 5 decimals, counts as they are."""
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}


def task_modules() -> list[str]:
    """Module names under compress/tasks, one per task."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def task_names() -> list[str]:
    return [name.replace("_", "-") for name in task_modules()]


def get_task(name: str) -> Task:
    """The task a recipe names, with the installed metric plugins that apply to it
    (compress.plugins); ValueError (one line, with the known names) otherwise."""
    from compress.plugins import with_plugin_metrics

    module = name.replace("-", "_")
    if module not in task_modules():
        raise ValueError(f"task '{name}' is not supported yet (supported: {', '.join(task_names())})")
    return with_plugin_metrics(importlib.import_module(f"{__name__}.{module}").TASK)
