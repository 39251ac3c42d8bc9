"""run_recipe: the whole flow. The artifact is the only thing passed between stages;
the pipeline measures every artifact, owns the run's bookkeeping and hands each stage a
read-only context.

A rerun into the same directory reuses every stage whose fingerprint (recipe up to
the stage, input artifact content, data split) is unchanged and whose files are
intact, and runs from the first stage that changed or did not finish."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from compress.artifacts import ARTIFACT_KINDS, Artifact, TorchModel
from compress.context import RunContext, stage_dir_name
from compress.distributed import Launch, share
from compress.errors import CompressError, SelectionError
from compress.evaluate import measure_artifact
from compress.hub import snapshot_of
from compress.label_agreement import compare_labels
from compress.latency_vs_input import compare_latency, describe_slower
from compress.models import resolve_model_dir
from compress.recipe import Recipe
from compress.resume import (
    SPLIT_IDENTITY,
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
) -> RunContext | None:
    """Run (or resume) a recipe into out_root/<name>/. force: redo every stage;
    from_index: reuse at most the stages before this index. Under torchrun or accelerate
    launch every process calls this: rank 0 runs the recipe and returns its context, the
    other ranks train with it (see compress.distributed) and return None."""
    from compress.data import load_splits
    from compress.distributed import launch, start

    job = launch()
    start(job)
    run_dir = out_root / recipe.name
    redo_from = 0 if force else (from_index if from_index is not None else len(recipe.stages))
    splits = load_splits(recipe.data, recipe.task)  # the data contract holds before anything is written
    if job.multi:
        _same_data_on_every_rank(splits, job)
    if not job.main:
        _follow_stages(recipe, run_dir, recipe_path, splits, job)
        return None
    with RunLock(run_dir, job.world_size):
        ctx = RunContext.create(recipe, run_dir, recipe_path, splits)
        try:
            model, benchmarked = _run_stages(recipe, ctx, redo_from, job)
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


def _run_stages(recipe: Recipe, ctx: RunContext, redo_from: int, job: Launch = Launch()
                ) -> tuple[Artifact, str | None]:
    """Runs the stages; returns the final artifact and the benchmark table if the benchmark
    already ran (it runs before a final stage such as package, so the model card can hold it).
    With several processes, every training stage tells the other ranks what to train (or that
    it is reused or skipped) once its directory is ready."""
    benchmark: str | None = None
    selection: dict | None = None  # the select block's record, once it chose
    if recipe.select is not None:
        _check_select_target(recipe, ctx)  # before hours of training, not after
    model: Artifact = TorchModel(resolve_model_dir(recipe.model, recipe.model_revision))
    ctx.manifest.model_sha256 = tree_sha256(model.path)
    input_sha = input_key(model.path)  # + the Hub commit of a Hub id model
    hub = snapshot_of(model.path)
    ctx.manifest.model_commit = hub.commit if hub is not None else None
    model_record: dict | None = None  # what was measured of `model` (None: a base model, not measured)
    model_name = "input"  # the ledger row of `model`
    if starts_fine_tuned(model.path, ctx):
        log.info("measuring the input model")
        model_record = measure_artifact(model, ctx.eval_set, recipe.measure)
        ctx.record_input(model_record)
    for i, stage in enumerate(recipe.stages):
        name = stage_dir_name(i, stage.kind)
        if stage.final and recipe.benchmark is not None and benchmark is None:
            benchmark = _run_benchmark(recipe, ctx)
        if stage.final and recipe.select is not None and selection is None:  # the final stage takes the choice
            selection = _select(recipe, ctx)
            model, model_record, model_name = _chosen_artifact(selection, ctx)
            input_sha = model_record["artifact_sha256"]
        reason = stage.unavailable_reason()
        if reason:  # e.g. build_engine without a GPU: never faked, the input passes through
            log.warning("stage %d/%d: %s skipped: %s", i + 1, len(recipe.stages), stage.kind, reason)
            ctx.skip_stage(i, stage.kind, reason)
            _tell_followers(job, stage, None)
            continue
        extra = [input_key(p) for p in stage.extra_inputs(ctx.recipe_path) if p.is_dir()]
        if stage.final and selection is not None:  # its card shows the select block's table
            extra.append(recipe.select.model_dump_json())
        fingerprint = stage_fingerprint(recipe, i, ":".join([input_sha, *extra]), ctx.splits.record)
        record = reusable_record(ctx.run_dir / name, fingerprint) if i < redo_from else None
        if record is not None:
            log.info("stage %d/%d: %s unchanged, reusing %s", i + 1, len(recipe.stages), stage.kind, name)
            ctx.reuse_stage(i, stage.kind, record)
            _tell_followers(job, stage, None)
        else:
            log.info("stage %d/%d: %s", i + 1, len(recipe.stages), stage.kind)
            with ctx.stage(i, stage.kind, stage.model_dump(mode="json", exclude={"kind"}), fingerprint,
                           read_input_record=_input_record_reader(model, model_record, ctx),
                           benchmark_markdown=benchmark, selection=selection) as sctx:
                _tell_followers(job, stage, TrainingOrder(model, sctx.artifact_dir, fingerprint, sctx.earlier))
                produced = stage.run(model, sctx)
                sctx.record(**measure_artifact(produced, ctx.eval_set, recipe.measure))
                comparison = compare_latency(sctx.info.get("latency"), (model_record or {}).get("latency"),
                                             model_name, same_model=stage.keeps_model)
                if comparison:
                    sctx.record(latency_vs_input=comparison)
                if (model_record or {}).get("predictions") and sctx.info.get("predictions"):
                    sctx.record(labels_vs_input=compare_labels(model_record["predictions"], sctx.info["predictions"],
                                                               ctx.eval_set.references))
            record = sctx.info
            if comparison and comparison["slower"]:  # never ship a slower artifact silently
                log.warning(describe_slower(name, record["artifact"], comparison))
        model, model_record = ARTIFACT_KINDS[record["artifact"]](ctx.run_dir / name), record
        model_name = name
        input_sha = record["artifact_sha256"]
    if recipe.select is not None and selection is None:  # no package stage: the choice is recorded only
        _select(recipe, ctx)
    return model, benchmark


def _check_select_target(recipe: Recipe, ctx: RunContext) -> None:
    from compress.bench.targets import unavailable_reason
    from compress.select.candidates import stage_records_fit

    reason = None if stage_records_fit(recipe.select, recipe.measure) else unavailable_reason(recipe.select.target)
    if reason:
        raise SelectionError(f"{ctx.recipe_path or 'recipe'}: select.target: {recipe.select.target} cannot run "
                             f"here: {reason}")


def _select(recipe: Recipe, ctx: RunContext) -> dict:
    """Choose among the stages so far (the select block); the record goes to manifest.json."""
    from compress.report import ledger_rows
    from compress.select.candidates import select_artifact

    try:
        selection = select_artifact(recipe, ledger_rows(ctx.manifest, ctx.run_dir), ctx.run_dir)
    except SelectionError as e:
        raise SelectionError(f"{ctx.recipe_path or 'recipe'}: {e}") from None
    log.info("select: %s, the fastest on %s (%s) within %.2f points of %s", selection["chosen"],
             selection["target"], selection["shape"], recipe.select.max_metric_drop * 100,
             selection["reference"]["name"])
    ctx.record_selection(selection)
    return selection


def _chosen_artifact(selection: dict, ctx: RunContext) -> tuple[Artifact, dict, str]:
    """The chosen stage's artifact, its record (stage.json) and name."""
    entry = next(e for e in ctx.manifest.stages if e.name == selection["chosen"])
    record = json.loads((ctx.run_dir / entry.path / "stage.json").read_text(encoding="utf-8"))
    return ARTIFACT_KINDS[entry.artifact](ctx.run_dir / entry.path), record, entry.name


def _input_record_reader(model: Artifact, record: dict | None, ctx: RunContext):
    """What a stage reads as its input's record: the previous stage's record or the run's
    input measurement; an input never measured (a base model) is measured when asked."""

    def read() -> dict:
        if record is None or ctx.recipe.metric_name not in record:
            return measure_artifact(model, ctx.eval_set, ctx.recipe.measure)
        return record

    return read


# ---------------------------------------------------------------------------- several processes


@dataclass(frozen=True)
class TrainingOrder:
    """What rank 0 tells the other ranks when a training stage starts: its input, the
    (prepared) directory it writes into, the resume key and the earlier stages' artifacts."""

    model: Artifact
    artifact_dir: Path
    fingerprint: str
    earlier: tuple


def _tell_followers(job: Launch, stage, order: TrainingOrder | None) -> None:
    """Rank 0, at a training stage of a multi-process run: what the other ranks train (None:
    reused or skipped)."""
    if job.multi and stage.trains:
        share(order)


def _same_data_on_every_rank(splits, job: Launch) -> None:
    """Every rank must train on the same split: on several machines a data path can name
    different files. Compared by content hash and counts, not by path."""
    keys = SPLIT_IDENTITY
    mine = {k: splits.record.get(k) for k in keys}
    theirs = share(mine if job.main else None)
    if mine != theirs:
        differs = ", ".join(k for k in keys if mine[k] != theirs[k])
        raise CompressError(f"{job.describe()} read different data than rank 0 ({differs} differ): every machine "
                            "must see the same data files")


def _follow_stages(recipe: Recipe, run_dir: Path, recipe_path: Path | None, splits, job: Launch) -> None:
    """A rank other than 0: train each training stage that rank 0 runs, on this rank's shard
    (Accelerate shards the loader), into rank 0's directory; nothing else. Returns after the
    last training stage, while rank 0 finishes the run (exports, quantization, measurement)."""
    from compress.context import StageContext
    from compress.evaluate import EvalSet
    from compress.tasks import get_task

    task = get_task(recipe.task)
    eval_set = EvalSet(task, splits.eval, recipe.data.max_length, recipe.trust_remote_code)
    for i, stage in enumerate(recipe.stages):
        if not stage.trains:
            continue
        order: TrainingOrder | None = share()
        if order is None:  # reused or skipped by rank 0
            continue
        log.debug("%s: stage %d (%s)", job.describe(), i + 1, stage.kind)
        sctx = StageContext(index=i, kind=stage.kind, artifact_dir=order.artifact_dir, recipe=recipe, task=task,
                            splits=splits, eval_set=eval_set, recipe_path=recipe_path,
                            fingerprint=order.fingerprint, earlier=order.earlier, main_process=False)
        stage.run(order.model, sctx)
    log.info("%s: training done; rank 0 finishes the run in %s", job.describe(), run_dir)
