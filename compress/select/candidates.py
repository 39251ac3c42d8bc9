"""The run's side of `select:`: the reference's metric and the candidates from the ledger
rows, their latencies from the stage records when those were timed on the block's target and
shape, else measured there by the benchmark machinery (into <run>/select/); then the choice."""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifacts import ARTIFACT_KINDS
from compress.bench.targets import TARGETS
from compress.errors import SelectionError
from compress.select.pareto import Candidate, choose
from compress.select.spec import INPUT, SelectSpec

log = logging.getLogger(__name__)
SELECT_DIR = "select"
# where a stage's own latency (compress.evaluate.measure_artifact) runs each artifact kind
STAGE_TARGETS = {"torch": "torch-cpu", "onnx": "ort-cpu", "trt": "trt"}


def stage_records_fit(select: SelectSpec, measure) -> bool:
    """Whether the stages' own latency is a measurement on the block's target and shape: batch
    1, the eval set's real lengths, measure.threads, on the target that runs the artifact kind."""
    kind = next(k for k, cls in ARTIFACT_KINDS.items() if cls is TARGETS[select.target].accepts)
    return (measure.latency_iterations > 0 and STAGE_TARGETS[kind] == select.target and select.batch_size == 1
            and select.seq_len == "real" and (select.threads or measure.threads) == measure.threads)


def reference_row(select: SelectSpec, rows: list[dict], stages: list, metric: str) -> dict:
    """The ledger row the drop is measured against (SelectionError when it has no metric)."""
    from compress.context import stage_dir_name
    from compress.stages.base import STAGE_REF, find_stage

    if select.reference == INPUT:
        row = next((r for r in rows if metric in r), None)
        if row is None:
            raise SelectionError(f"select.reference: input: no row of the ledger has the {metric}")
        return row
    final = next((i for i, s in enumerate(stages) if s.final), len(stages))
    index = find_stage(select.reference[len(STAGE_REF):], stages, final)
    name = stage_dir_name(index, stages[index].kind)
    row = next(r for r in rows if r["stage"] == name)
    if metric not in row:
        why = row.get("error") or row.get("status")
        raise SelectionError(f"select.reference: {select.reference} ({name}) has no {metric}: {why}")
    return row


def split_candidates(select: SelectSpec, rows: list[dict], metric: str) -> tuple[list[dict], list[dict]]:
    """(the stage rows the target runs, with the metric; the others, each with why not)."""
    runs = TARGETS[select.target].accepts
    candidates, others = [], []
    for r in rows:
        if r["stage"] == INPUT:
            continue
        if metric not in r:
            others.append({"stage": r["stage"], "reason": r.get("status", "not measured")})
        elif ARTIFACT_KINDS[r["artifact"]] is not runs:
            others.append({"stage": r["stage"], "reason": f"{ARTIFACT_KINDS[r['artifact']].description}; "
                                                          f"{select.target} runs {runs.description}"})
        else:
            candidates.append(r)
    return candidates, others


def measure_on_target(select: SelectSpec, recipe, rows: list[dict], run_dir: Path, threads: int) -> dict[str, dict]:
    """Each candidate timed on the block's target and shape with `compress bench`'s machinery
    (a fresh process per cell); the benchmark rows by stage name."""
    from compress.bench.plan import BenchModel
    from compress.bench.runner import run_benchmark
    from compress.bench.settings import BenchSettings, ShapeSpec

    real = select.seq_len == "real"
    settings = BenchSettings(targets=[select.target], threads=[threads], accuracy=False,
                             shapes=ShapeSpec(batch_sizes=[select.batch_size], real=real,
                                              seq_lens=[] if real else [select.seq_len]))
    data = recipe.data.model_dump(mode="json")
    models = [BenchModel(r["stage"], ARTIFACT_KINDS[r["artifact"]](run_dir / r["stage"]), recipe.name, data=data,
                         task=recipe.task, metric=recipe.metric_name, artifact_sha256=r.get("artifact_sha256"))
              for r in rows]
    log.info("select: timing %d candidates on %s, %s, %d threads", len(models), select.target, select.shape, threads)
    measured = run_benchmark(models, settings, run_dir / SELECT_DIR, where="select", paths_from=run_dir)
    return {m["model"]: m for m in measured}


def select_artifact(recipe, rows: list[dict], run_dir: Path) -> dict:
    """The select block's record: target, shape, reference, where the latencies came from, the
    candidates marked (chosen, on front, within budget) and the stages that were not candidates.
    SelectionError when no candidate meets the budget."""
    select, metric, measure = recipe.select, recipe.metric_name, recipe.measure
    threads = select.threads or measure.threads
    reference = reference_row(select, rows, list(recipe.stages), metric)
    found, others = split_candidates(select, rows, metric)
    if stage_records_fit(select, measure):
        p50 = {r["stage"]: r["latency"]["p50_ms"] for r in found}
        source = f"each stage's own measurement ({measure.latency_iterations} calls)"
    else:
        measured = measure_on_target(select, recipe, found, run_dir, threads) if found else {}
        p50 = {name: m["p50_ms"] for name, m in measured.items() if m["status"] == "ok"}
        others += [{"stage": name, "reason": f"not timed on {select.target}: {m.get('reason')}"}
                   for name, m in measured.items() if m["status"] != "ok"]
        source = f"{SELECT_DIR}/results.jsonl (compress bench, a fresh process per candidate)"
    candidates = [Candidate(r["stage"], r["artifact"], r[metric], p50[r["stage"]]) for r in found if r["stage"] in p50]
    if not candidates:
        why = "; ".join(f"{n['stage']}: {n['reason']}" for n in others) or "no stages"
        raise SelectionError(f"select.target: no stage has {TARGETS[select.target].accepts.description} timed on "
                             f"{select.target} with the {metric} ({why})")
    try:
        choice = choose(candidates, reference[metric], select.max_metric_drop, reference["stage"], metric)
    except SelectionError as e:
        raise SelectionError(f"select.max_metric_drop: {e}") from None
    return {"target": select.target, "shape": select.shape, "threads": threads, "metric": metric,
            "max_metric_drop": select.max_metric_drop, "reference": {"name": reference["stage"], "value": reference[metric]},
            "latency_source": source, **choice, "not_candidates": others}
