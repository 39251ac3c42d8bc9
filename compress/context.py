"""Run and stage directories, the per-stage record (stage.json) and manifest.json, and
the read-only context a stage runs in.

A stage writes into a hidden `.NN-kind.partial/` directory that is renamed into
place only after the stage and its measurements finished, so a directory named
`NN-kind/` is always complete. manifest.json says which stages ran and how."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from compress.artifacts import ARTIFACT_KINDS, Artifact, artifact_kind
from compress.errors import StageError
from compress.files import replace_dir, write_json
from compress.manifest import Manifest, StageEntry

if TYPE_CHECKING:
    from compress.data import DataSplits
    from compress.evaluate import EvalSet, MeasureSpec
    from compress.recipe import Recipe
    from compress.tasks import Task

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"


def _clear_partial(partial: Path, fingerprint: str) -> None:
    """Empty a stage's .partial directory, keeping a training checkpoint written for the
    same fingerprint (so a rerun after a kill resumes mid-stage instead of from step 0)."""
    from compress.resume import checkpoint_key

    checkpoint = partial / CHECKPOINT_DIR
    if not partial.exists():
        return
    if checkpoint_key(checkpoint) != fingerprint:
        shutil.rmtree(partial, ignore_errors=True)
        return
    log.info("keeping the training checkpoint in %s for resuming", checkpoint)
    for p in partial.iterdir():
        if p.name != CHECKPOINT_DIR:
            shutil.rmtree(p) if p.is_dir() else p.unlink()



def stage_dir_name(index: int, kind: str) -> str:
    return f"{index + 1:02d}-{kind}"


def summarize_record(record: dict, metric: str) -> dict:
    """The parts of a stage record that a later stage compares itself against."""
    return {metric: record.get(metric), "parameters": record.get("parameters"),
            "latency_p50_ms": (record.get("latency") or {}).get("p50_ms"), "structure": record.get("structure")}


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may see, read-only: its own output directory and record, the
    recipe, the task, the data splits and encoded eval set, its input's record, and the
    artifacts of earlier stages by reference. Never the run manifest or another stage's
    files by name; measuring is the pipeline's job."""

    index: int
    kind: str
    artifact_dir: Path  # where the stage writes its artifact (the .partial directory)
    recipe: Recipe
    task: Task
    splits: DataSplits
    eval_set: EvalSet
    recipe_path: Path | None = None
    fingerprint: str | None = None  # the stage's input fingerprint: a training checkpoint resumes only on a match
    earlier: tuple[tuple[StageEntry, Artifact | None], ...] = ()  # earlier stages of this run, in order
    ledger: tuple[dict, ...] = ()  # the input's and earlier stages' records (compress.report.ledger_rows)
    benchmark_markdown: str | None = None  # the run's benchmark table, when it ran before this stage
    selection: dict | None = None  # the select block's record, when it chose this stage's input
    read_input_record: Callable[[], dict] = dict  # the pipeline's: the input's record, measured if it has none
    info: dict = field(default_factory=dict)  # this stage's own record (stage.json), filled by record()
    # False on the other ranks of a multi-process run: they train with rank 0 and write nothing
    main_process: bool = True

    @property
    def checkpoint_dir(self) -> Path:
        """Mid-stage training state; lives in the .partial directory, never in the finished artifact."""
        return self.artifact_dir / CHECKPOINT_DIR

    @property
    def name(self) -> str:
        return stage_dir_name(self.index, self.kind)

    @property
    def measure(self) -> MeasureSpec:
        return self.recipe.measure

    @property
    def metric(self) -> str:
        """The metric this run compares (the recipe's `metric`, or the task's default)."""
        return self.recipe.metric_name

    def encoded_eval(self, artifact: Artifact, n: int | None = None) -> list[dict]:
        """The eval split's features for the artifact's tokenizer (of the first n examples)."""
        return self.eval_set.head(artifact, n)[0]

    @cached_property
    def input_record(self) -> dict:
        """The input artifact's record (the previous stage's stage.json, or the run's input
        measurement), with the task's metrics, parameters and latency."""
        return self.read_input_record()

    def input_summary(self) -> dict:
        return summarize_record(self.input_record, self.metric)

    def artifact_of(self, ref: str) -> Artifact:
        """An earlier stage's artifact: 'stage:<n|NN-kind|kind>' (see find_stage) or an artifact
        kind ('torch', 'onnx', 'trt': the latest earlier stage that made one)."""
        from compress.stages.base import STAGE_REF, find_stage

        if ref.startswith(STAGE_REF):
            k = find_stage(ref[len(STAGE_REF):], list(self.recipe.stages), self.index)
            entry, artifact = self.earlier[k]
            if artifact is None:
                why = f": {entry.reason or entry.error}" if entry.reason or entry.error else ""
                raise StageError(f"{ref} ({entry.name}) has no artifact: it was {entry.status}{why}")
            return artifact
        if ref not in ARTIFACT_KINDS:
            raise StageError(f"cannot resolve {ref!r}: expected 'stage:<n|name|kind>' or one of "
                             f"{', '.join(ARTIFACT_KINDS)}")
        found = [a for e, a in self.earlier if a is not None and e.artifact == ref]
        if not found:
            raise StageError(f"no earlier stage of this run made {ARTIFACT_KINDS[ref].description}")
        return found[-1]

    def record(self, **values: Any) -> None:
        """Add entries to this stage's stage.json."""
        self.info.update(values)


class RunContext:
    """The run directory: manifest.json, the data split, the eval set, and the stages'
    directories (each written as .partial and renamed into place when complete)."""

    def __init__(self, recipe: Recipe, run_dir: Path, recipe_path: Path | None = None, manifest: Manifest | None = None):
        from compress.tasks import get_task

        self.recipe = recipe
        self.run_dir = run_dir
        self.recipe_path = recipe_path
        self.task = get_task(recipe.task)
        self.manifest = manifest or Manifest.read(run_dir)

    @classmethod
    def create(cls, recipe: Recipe, run_dir: Path, recipe_path: Path | None = None,
               splits: DataSplits | None = None) -> RunContext:
        """A new run in run_dir; `splits`: the data already loaded and checked (else loaded on first use)."""
        from compress.environment import environment

        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = recipe.model_dump(mode="json")
        (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        manifest = Manifest(name=recipe.name, status="running",
                            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            recipe=str(recipe_path) if recipe_path else None, model=recipe.model, task=recipe.task,
                            metric=recipe.metric_name,
                            environment=environment())
        ctx = cls(recipe, run_dir, recipe_path, manifest)
        ctx.write_manifest()
        if splits is not None:
            ctx._record_splits(splits)
        return ctx

    @cached_property
    def splits(self) -> DataSplits:
        from compress.data import load_splits

        return self._record_splits(load_splits(self.recipe.data, self.recipe.task))

    def _record_splits(self, splits: DataSplits) -> DataSplits:
        self.__dict__["splits"] = splits  # the cached_property's value
        self.manifest.data = splits.record
        write_json(self.run_dir / "data_split.json", {
            **splits.record, "train_rows": splits.train.rows, "eval_rows": splits.eval.rows,
        })
        self.write_manifest()
        return splits

    @cached_property
    def eval_set(self) -> EvalSet:
        from compress.evaluate import EvalSet

        return EvalSet(self.task, self.splits.eval, self.recipe.data.max_length, self.recipe.trust_remote_code)

    def write_manifest(self) -> None:
        write_json(self.run_dir / "manifest.json", self.manifest.to_json())

    def earlier_artifacts(self) -> tuple[tuple[StageEntry, Artifact | None], ...]:
        """Every stage entry so far with its artifact (None where it has none: skipped, failed)."""
        return tuple((e, ARTIFACT_KINDS[e.artifact](self.run_dir / e.path) if e.done and e.artifact else None)
                     for e in self.manifest.stages)

    def stage_context(self, index: int, kind: str, artifact_dir: Path, fingerprint: str | None = None,
                      read_input_record: Callable[[], dict] = dict, benchmark_markdown: str | None = None,
                      selection: dict | None = None) -> StageContext:
        from compress.report import ledger_rows

        return StageContext(index=index, kind=kind, artifact_dir=artifact_dir, recipe=self.recipe, task=self.task,
                            splits=self.splits, eval_set=self.eval_set, recipe_path=self.recipe_path,
                            fingerprint=fingerprint, earlier=self.earlier_artifacts(),
                            ledger=tuple(ledger_rows(self.manifest, self.run_dir)),
                            benchmark_markdown=benchmark_markdown, read_input_record=read_input_record,
                            selection=selection)

    @contextmanager
    def stage(self, index: int, kind: str, config: dict, fingerprint: str, **context: Any):
        """Run a stage into .NN-kind.partial/; on success its record goes to stage.json and the
        directory is renamed to NN-kind/. `context`: stage_context's keyword arguments."""
        from compress.resume import tree_sha256

        name = stage_dir_name(index, kind)
        final, partial = self.run_dir / name, self.run_dir / f".{name}.partial"
        _clear_partial(partial, fingerprint)  # left by a killed run
        partial.mkdir(parents=True, exist_ok=True)
        sctx = self.stage_context(index, kind, partial, fingerprint, **context)
        entry = StageEntry(name=name, kind=kind, status="running", config=config)
        self.manifest.stages.append(entry)
        self.write_manifest()
        started = time.perf_counter()
        try:
            yield sctx
            shutil.rmtree(sctx.checkpoint_dir, ignore_errors=True)
            sctx.record(fingerprint=fingerprint, artifact_sha256=tree_sha256(partial))
        except BaseException as e:
            entry.status, entry.error = "failed", str(e) or type(e).__name__
            entry.wall_seconds = round(time.perf_counter() - started, 2)
            self.finish("failed", error=f"stage {name}: {e or type(e).__name__}")
            _clear_partial(partial, fingerprint)  # a training checkpoint survives for the rerun
            raise
        record = {"name": name, "kind": kind, "config": config, **sctx.info,
                  "wall_seconds": round(time.perf_counter() - started, 2)}
        write_json(partial / "stage.json", record)
        replace_dir(partial, final)
        self._complete(entry, "completed", record)

    def _complete(self, entry: StageEntry, status: str, record: dict) -> None:
        entry.status, entry.path = status, entry.name
        entry.wall_seconds, entry.artifact = record.get("wall_seconds"), record.get("artifact")
        entry.metrics = {k: record[k] for k in self.task.metric_names if k in record} or None
        entry.artifact_sha256 = record["artifact_sha256"]
        self.write_manifest()

    def reuse_stage(self, index: int, kind: str, record: dict) -> None:
        """Record a stage whose earlier output is reused as is (same fingerprint, intact files)."""
        entry = StageEntry(name=stage_dir_name(index, kind), kind=kind, status="reused", config=record.get("config"))
        self.manifest.stages.append(entry)
        self._complete(entry, "reused", record)

    def skip_stage(self, index: int, kind: str, reason: str) -> None:
        self.manifest.stages.append(StageEntry(name=stage_dir_name(index, kind), kind=kind, status="skipped",
                                               reason=reason))
        self.write_manifest()

    def record_selection(self, selection: dict) -> None:
        self.manifest.selection = selection
        self.write_manifest()

    def record_input(self, record: dict) -> None:
        self.manifest.input = record
        self.write_manifest()

    def finish(self, status: str, final: Artifact | None = None, error: str | None = None) -> None:
        self.manifest.status = status
        self.manifest.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if final is not None:
            inside = final.path.is_relative_to(self.run_dir)  # not when every stage was skipped
            path = final.path.relative_to(self.run_dir) if inside else final.path
            self.manifest.final_artifact = {"kind": artifact_kind(final), "path": str(path)}
        if error:
            self.manifest.error = error
        self.write_manifest()
