"""run_recipe: the whole flow. The artifact is the only thing passed between stages;
the pipeline measures every artifact, owns the run's bookkeeping and hands each stage a
read-only context.

A rerun into the same directory reuses every stage whose fingerprint (recipe up to
the stage, input artifact content, data split) is unchanged and whose files are
intact, and runs from the first stage that changed or did not finish."""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifacts import ARTIFACT_KINDS, Artifact, TorchModel
from compress.context import RunContext, stage_dir_name
from compress.evaluate import measure_artifact
from compress.hub import snapshot_of
from compress.models import resolve_model_dir
from compress.recipe import Recipe
from compress.resume import (
    RunLock,
    input_key,
    reusable_record,
    stage_fingerprint,
    tree_sha256,
)

log = logging.getLogger(__name__)
BENCH_DIR = "bench"


def run_recipe(
    recipe: Recipe, out_root: Path, recipe_path: Path | None = None, force: bool = False, from_index: int | None = None
) -> RunContext:
    """Run (or resume) a recipe into out_root/<name>/. force: redo every stage;
    from_index: reuse at most the stages before this index."""
    from compress.data import load_splits

    run_dir = out_root / recipe.name
    redo_from = 0 if force else (from_index if from_index is not None else len(recipe.stages))
    splits = load_splits(recipe.data, recipe.task)  # the data contract holds before anything is written
    with RunLock(run_dir):
        ctx = RunContext.create(recipe, run_dir, recipe_path, splits)
        try:
            model, benchmarked = _run_stages(recipe, ctx, redo_from)
        except BaseException as e:
            if ctx.manifest.status == "running":  # failed outside a stage (e.g. measuring the input)
                ctx.finish("failed", error=str(e) or type(e).__name__)
            raise
        ctx.finish("completed", final=model)
        if recipe.benchmark is not None and benchmarked is None:  # into runs/<name>/bench/
            _run_benchmark(recipe, ctx)
    return ctx


def _run_benchmark(recipe: Recipe, ctx: RunContext) -> str:
    """Benchmark the run's artifacts so far; returns the Markdown table (bench/results.md)."""
    from compress.bench.plan import resolve_models
    from compress.bench.runner import run_benchmark
    from compress.bench.spec import BenchSpec

    # A run that starts from an already fine-tuned model (no finetune stage) measures
    # that input as its baseline: the uncompressed model is what every speedup is against.
    source = resolve_model_dir(recipe.model, recipe.model_revision)
    fine_tuned = starts_fine_tuned(source, ctx)
    spec = BenchSpec(models=[{"path": str(ctx.run_dir)}], baseline=str(source) if fine_tuned else None,
                     data=recipe.data if fine_tuned else None, task=recipe.task, **recipe.benchmark.model_dump())
    log.info("benchmark: %s", ", ".join(recipe.benchmark.targets))
    out_dir = ctx.run_dir / BENCH_DIR
    run_benchmark(resolve_models(spec), recipe.benchmark, out_dir, where="benchmark", paths_from=ctx.run_dir)
    return (out_dir / "results.md").read_text(encoding="utf-8")


def starts_fine_tuned(model_dir: Path, ctx: RunContext) -> bool:
    """The recipe's input already does the run's task for the run's labels: it is measured
    as the run's input, and a benchmark block takes it as the baseline."""
    return ctx.task.is_trained_for(model_dir, ctx.splits.label_names)


def _run_stages(recipe: Recipe, ctx: RunContext, redo_from: int) -> tuple[Artifact, str | None]:
    """Runs the stages; returns the final artifact and the benchmark table if the benchmark
    already ran (it runs before a final stage such as package, so the model card can hold it)."""
    benchmark: str | None = None
    model: Artifact = TorchModel(resolve_model_dir(recipe.model, recipe.model_revision))
    ctx.manifest.model_sha256 = tree_sha256(model.path)
    input_sha = input_key(model.path)  # + the Hub commit of a Hub id model
    hub = snapshot_of(model.path)
    ctx.manifest.model_commit = hub.commit if hub is not None else None
    model_record: dict | None = None  # what was measured of `model` (None: a base model, not measured)
    if starts_fine_tuned(model.path, ctx):
        log.info("measuring the input model")
        model_record = measure_artifact(model, ctx.eval_set, recipe.measure)
        ctx.record_input(model_record)
    for i, stage in enumerate(recipe.stages):
        name = stage_dir_name(i, stage.kind)
        if stage.final and recipe.benchmark is not None and benchmark is None:
            benchmark = _run_benchmark(recipe, ctx)
        reason = stage.unavailable_reason()
        if reason:  # e.g. build_engine without a GPU: never faked, the input passes through
            log.warning("stage %d/%d: %s skipped: %s", i + 1, len(recipe.stages), stage.kind, reason)
            ctx.skip_stage(i, stage.kind, reason)
            continue
        extra = [input_key(p) for p in stage.extra_inputs(ctx.recipe_path) if p.is_dir()]
        fingerprint = stage_fingerprint(recipe, i, ":".join([input_sha, *extra]), ctx.splits.record)
        record = reusable_record(ctx.run_dir / name, fingerprint) if i < redo_from else None
        if record is not None:
            log.info("stage %d/%d: %s unchanged, reusing %s", i + 1, len(recipe.stages), stage.kind, name)
            ctx.reuse_stage(i, stage.kind, record)
        else:
            log.info("stage %d/%d: %s", i + 1, len(recipe.stages), stage.kind)
            with ctx.stage(i, stage.kind, stage.model_dump(mode="json", exclude={"kind"}), fingerprint,
                           read_input_record=_input_record_reader(model, model_record, ctx),
                           benchmark_markdown=benchmark) as sctx:
                produced = stage.run(model, sctx)
                sctx.record(**measure_artifact(produced, ctx.eval_set, recipe.measure))
            record = sctx.info
        model, model_record = ARTIFACT_KINDS[record["artifact"]](ctx.run_dir / name), record
        input_sha = record["artifact_sha256"]
    return model, benchmark


def _input_record_reader(model: Artifact, record: dict | None, ctx: RunContext):
    """What a stage reads as its input's record: the previous stage's record or the run's
    input measurement; an input never measured (a base model) is measured when asked."""

    def read() -> dict:
        if record is None or ctx.recipe.metric_name not in record:
            return measure_artifact(model, ctx.eval_set, ctx.recipe.measure)
        return record

    return read
