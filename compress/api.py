"""The Python API: run a recipe, benchmark artifacts, load a package, with typed results.

    import compress
    result = compress.run("recipes/quickstart.yaml", out="runs")   # RunResult
    result.stage("ptq").metrics["accuracy"], result.package
    bench = compress.benchmark("benchmarks/quickstart.yaml")      # BenchResult: rows, table
    predictor = compress.load(result.package)                     # compress.runtime.Predictor

Light to import (stdlib only at module level): `compress.load` works in the runtime-only
install; `run` and `benchmark` need the `train` extra and say so in one line
(MissingExtraError) when it is missing. Errors are the CLI's: CompressError subclasses
with one-line messages naming the file and field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.runtime import Predictor


@dataclass(frozen=True)
class StageResult:
    """One stage of a run, as manifest.json records it."""

    name: str  # the stage directory, NN-kind
    kind: str
    status: str  # completed, reused (from an earlier run), skipped
    path: Path | None  # the artifact's directory (None when skipped)
    artifact: str | None  # torch, onnx, trt
    metrics: dict  # the task's metrics on the eval split (e.g. {"accuracy": 0.81})
    wall_seconds: float | None
    reason: str | None = None  # why a stage was skipped

    @property
    def record(self) -> dict:
        """The stage's stage.json: size, parameters, latency and the stage's own facts."""
        import json

        if self.path is None:
            return {}
        return json.loads((self.path / "stage.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, its stages and where its final model and package are."""

    name: str
    run_dir: Path
    status: str
    task: str
    metric: str  # the metric the ledger compares
    stages: tuple[StageResult, ...]
    final_artifact: Path | None
    package: Path | None  # the package stage's directory (load it with compress.load)

    def stage(self, key: str | int) -> StageResult:
        """A stage by number (1-based), directory name (03-optimize_onnx) or kind (the last of that kind)."""
        for s in reversed(self.stages):
            if key in (s.name, s.kind) or (isinstance(key, int) and s.name.startswith(f"{key:02d}-")):
                return s
        raise KeyError(f"{self.run_dir}: no stage {key!r} (stages: {', '.join(s.name for s in self.stages)})")

    @property
    def summary(self) -> str:
        """The run's ledger as Markdown (summary.md)."""
        return (self.run_dir / "summary.md").read_text(encoding="utf-8")

    @classmethod
    def read(cls, run_dir: str | Path) -> RunResult:
        """The result of a run directory written earlier (its manifest.json)."""
        from compress.manifest import Manifest

        run_dir = Path(run_dir)
        m = Manifest.read(run_dir)
        stages = tuple(StageResult(name=e.name, kind=e.kind, status=e.status,
                                   path=run_dir / e.path if e.path else None, artifact=e.artifact,
                                   metrics=dict(e.metrics or {}), wall_seconds=e.wall_seconds, reason=e.reason)
                       for e in m.stages)
        final = run_dir / m.final_artifact["path"] if m.final_artifact else None
        package = next((s.path for s in reversed(stages) if s.kind == "package" and s.path), None)
        return cls(name=m.name, run_dir=run_dir, status=m.status, task=m.task,
                   metric=m.metric or _default_metric(m.task), stages=stages, final_artifact=final, package=package)


def _default_metric(task: str) -> str:
    from compress.tasks import get_task

    return get_task(task).primary_metric


@dataclass(frozen=True)
class BenchResult:
    """A finished benchmark: one row per (model, target, shape, threads) cell."""

    out_dir: Path
    rows: tuple[dict, ...]  # as results.jsonl: status, p50_ms, p99_ms, throughput, the metric, ...

    @property
    def failed(self) -> tuple[dict, ...]:
        return tuple(r for r in self.rows if r["status"] == "failed")

    @property
    def table(self) -> str:
        """results.md: one Markdown table per shape, models × targets."""
        return (self.out_dir / "results.md").read_text(encoding="utf-8")


def run(recipe: str | Path, out: str | Path = "runs", *, force: bool = False, from_stage: str | None = None,
        offline: bool = False) -> RunResult | None:
    """Run (or resume) a recipe into OUT/<name>/, as `compress run`. force: redo every stage;
    from_stage: redo from this stage (number, NN-kind or kind); offline: Hub ids from the local
    cache only. Under torchrun / accelerate launch, ranks other than 0 train and return None."""
    import os

    from compress.extras import require_training_stack

    require_training_stack("compress.run()")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe
    from compress.report import markdown_summary
    from compress.resume import resolve_from_stage

    recipe = Path(recipe)
    spec = load_recipe(recipe)
    from_index = resolve_from_stage(spec.stages, from_stage) if from_stage else None
    ctx = run_recipe(spec, Path(out), recipe_path=recipe.resolve(), force=force, from_index=from_index)
    if ctx is None:
        return None
    (ctx.run_dir / "summary.md").write_text(markdown_summary(ctx.run_dir), encoding="utf-8")
    return RunResult.read(ctx.run_dir)


def benchmark(spec: str | Path, out: str | Path | None = None, *,
              on_row: Callable[[dict], None] | None = None) -> BenchResult:
    """Measure the bench spec's models side by side, as `compress bench`: results.jsonl,
    results.csv, results.md and pareto.png in OUT (default runs/bench/<spec name>). Every input
    error is raised before any cell runs; on_row sees each row as its cell finishes."""
    from compress.extras import require_training_stack

    require_training_stack("compress.benchmark()")
    from compress.bench.plan import build_plan, resolve_models
    from compress.bench.runner import run_benchmark
    from compress.bench.spec import BenchSpecError, load_bench_spec
    from compress.errors import CompressError

    spec = Path(spec)
    settings = load_bench_spec(spec)
    models = resolve_models(settings, str(spec))
    build_plan(models, settings, str(spec))
    if settings.data is not None:
        from compress.data import load_splits

        try:
            load_splits(settings.data, settings.task)
        except CompressError as e:
            raise BenchSpecError(f"{spec}: data: {e}") from None
    out_dir = Path(out) if out is not None else Path("runs") / "bench" / settings.name
    rows = run_benchmark(models, settings, out_dir, str(spec), on_row=on_row, paths_from=spec.resolve().parent)
    return BenchResult(out_dir=out_dir, rows=tuple(rows))


def load(package: str | Path, **options) -> Predictor:
    """Open a package directory (the package stage's output) for prediction: the light runtime's
    Predictor.load (options: providers, threads, batch_size, verify)."""
    from compress.runtime import Predictor

    return Predictor.load(package, **options)
