"""Plugins: stage kinds and metrics that other distributions add through Python entry points.

    [project.entry-points."compress.stages"]
    annotate = "my_plugin:AnnotateStage"     # a StageConfig subclass with kind: Literal["annotate"]
    [project.entry-points."compress.metrics"]
    top2_accuracy = "my_plugin:top2_accuracy"  # metric(outputs, features, references) -> float

A stage plugin joins the recipe's stage union beside the built-in kinds (compress/stages), so
the schema, `compress validate`, the stage-order check and the "did you mean" hints take it
like a built-in one. A metric plugin (its entry point's name is the metric's name; optional
attribute `tasks`, the task names it applies to, default every task; higher is better) is added
to its tasks' `metric_names` and `metrics()`, so a recipe's `metric:` may pick it and the
ledger, keep_best, the budgets, the benchmark and the model card report it.

Stdlib only (importlib.metadata). Stage plugins load with the stage union (when a recipe or
the schema is read); metric plugins on a task's first metric_names / metrics() use, so the
deploy-time runtime never imports them. A broken plugin is a PluginError naming the entry point."""

from __future__ import annotations

import math
import numbers
import re
from functools import cache, cached_property
from importlib.metadata import EntryPoint, entry_points

from compress.errors import CompressError

STAGE_GROUP = "compress.stages"
METRIC_GROUP = "compress.metrics"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PluginError(CompressError):
    """An installed plugin cannot be loaded or does not keep the plugin contract."""


def _origin(ep: EntryPoint) -> str:
    return f" (from {ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""


def describe(ep: EntryPoint) -> str:
    """"group 'name' = module:attr (from dist version)", for messages."""
    return f"{ep.group} '{ep.name}' = {ep.value}{_origin(ep)}"


@cache
def plugin_entry_points(group: str) -> tuple[EntryPoint, ...]:
    """The installed entry points of a group, by name; a name two distributions claim is refused."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.name in found and found[ep.name].value != ep.value:
            raise PluginError(f"plugin {describe(ep)}: the name is taken by {describe(found[ep.name])}")
        if not _NAME.match(ep.name):
            raise PluginError(f"plugin {describe(ep)}: the name must be lower-case letters, digits and "
                              "underscores, starting with a letter")
        found[ep.name] = ep
    return tuple(found.values())


def load_plugin(ep: EntryPoint):
    try:
        return ep.load()
    except Exception as e:  # the plugin's own import error: one line naming the plugin
        raise PluginError(f"plugin {describe(ep)}: cannot load it: {type(e).__name__}: {e}") from None


def listing() -> list[str]:
    """One line per installed plugin: 'stage annotate = my_plugin:AnnotateStage (from my-plugin 0.1)'."""
    return [f"{kind} {ep.name} = {ep.value}{_origin(ep)}"
            for kind, group in (("stage", STAGE_GROUP), ("metric", METRIC_GROUP))
            for ep in plugin_entry_points(group)]


# ---------------------------------------------------------------------------- metrics


def metric_plugin_names() -> list[str]:
    """Every installed metric plugin's name (without loading any)."""
    return [ep.name for ep in plugin_entry_points(METRIC_GROUP)]


def with_plugin_metrics(task):
    """The task with the installed metric plugins that apply to it (the task itself when none
    is installed). Plugins are loaded on first use of metric_names or metrics()."""
    eps = plugin_entry_points(METRIC_GROUP)
    return TaskWithPluginMetrics(task, eps) if eps else task


class TaskWithPluginMetrics:
    """A task whose metric_names and metrics() also hold its metric plugins; every other
    attribute is the task's own."""

    def __init__(self, task, eps: tuple[EntryPoint, ...]):
        self._task, self._eps = task, eps

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_task", "_eps"):
            raise AttributeError(name)
        return getattr(self._task, name)

    def __repr__(self) -> str:
        return f"{self._task.name} with metric plugins {', '.join(self._plugins) or '(none apply)'}"

    @cached_property
    def _plugins(self) -> dict:
        plugins = {}
        for ep in self._eps:
            metric = load_plugin(ep)
            if not callable(metric):
                raise PluginError(f"plugin {describe(ep)}: not callable (a metric is "
                                  "metric(outputs, features, references) -> float)")
            tasks = getattr(metric, "tasks", None)
            if isinstance(tasks, str) or (tasks is not None and not all(isinstance(t, str) for t in tasks)):
                raise PluginError(f"plugin {describe(ep)}: tasks must be a list of task names, got {tasks!r}")
            if tasks is not None and self._task.name not in tasks:
                continue
            if ep.name in self._task.metric_names:
                raise PluginError(f"plugin {describe(ep)}: {self._task.name} already has a metric named {ep.name}")
            plugins[ep.name] = (ep, metric)
        return plugins

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*self._task.metric_names, *self._plugins)

    def metrics(self, outputs, features, references) -> dict:
        values = self._task.metrics(outputs, features, references)
        for name, (ep, metric) in self._plugins.items():
            value = metric(outputs, features, references)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise PluginError(f"plugin {describe(ep)}: returned {value!r}, not a finite number")
            values[name] = float(value)
        return values
