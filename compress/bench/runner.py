"""Run a plan: each cell in its own subprocess with its threads set, one JSONL row
appended as each cell finishes (a crash keeps the finished rows), then the reports."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from compress.bench.plan import Cell, Plan
from compress.bench.settings import BenchSettings
from compress.progress import progress_bar

log = logging.getLogger(__name__)

RESULTS_JSONL = "results.jsonl"
REPEATS_JSONL = "repeats.jsonl"  # every repeat of every cell, when repeats > 1
REPEATED_STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "paired_speedup")


def fingerprint() -> dict:
    """Where the numbers came from: CPU, cores, libraries, git commit, machine load."""
    from compress.environment import environment, usable_cores

    env = environment()
    try:
        import onnxruntime

        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    env["cores_usable"] = usable_cores()
    env["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    env["nice"] = os.nice(0)
    return env


def shape_label(batch_size: int | None, seq_len: int | None) -> str:
    if batch_size is None:
        return "-"
    return f"b{batch_size}x{'real' if seq_len is None else seq_len}"


def base_row(cell: Cell, run_id: str, env: dict, paths_from: Path) -> dict:
    """A row's identity; the artifact's path relative to `paths_from` (the spec's or the run's
    directory), so committed results name no directory of the machine that made them."""
    m = cell.model
    path = os.path.relpath(m.artifact.path, paths_from)
    return {
        "run_id": run_id, "model": m.name, "group": m.group, "role": m.role, "kind": m.kind, "path": path,
        "artifact_sha256": m.artifact_sha256, "baseline_reference": m.baseline_ref, "ort_fp32_reference": m.ort_ref,
        "target": cell.target, "shape": shape_label(cell.batch_size, cell.seq_len), "batch_size": cell.batch_size,
        "seq_len": "real" if cell.seq_len is None and cell.batch_size else cell.seq_len, "threads": cell.threads,
    } | {"env": env}


def cell_label(cell: Cell, shape: str) -> str:
    """A cell as the log and the progress bar name it, e.g. 'int8 on ort-cpu, b1xreal, 1 threads'."""
    return f"{cell.model.name} on {cell.target}, {shape}, {cell.threads} threads"


def cell_job(cell: Cell, settings: BenchSettings) -> dict:
    return {
        "model": cell.model.job(), "target": cell.target, "batch_size": cell.batch_size, "seq_len": cell.seq_len,
        "threads": cell.threads, "accuracy": cell.accuracy, "data": cell.model.data,
        "warmup": settings.warmup, "min_iterations": settings.min_iterations, "min_seconds": settings.min_seconds,
        "max_seconds": settings.max_seconds, "eval_batch_size": settings.eval_batch_size,
        "max_eval_samples": settings.max_eval_samples,
        "paired_with": cell.paired_with.job() if cell.paired_with else None,
    }


def run_cell(cell: Cell, settings: BenchSettings, work: Path) -> dict:
    """Measure one cell in a fresh interpreter; returns its metrics, or status failed with the error."""
    job_path, out_path = work / "job.json", work / "result.json"
    out_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps(cell_job(cell, settings)), encoding="utf-8")
    threads = str(cell.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "compress.bench.cell", str(job_path), str(out_path)],
                              env=env, capture_output=True, text=True, timeout=settings.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"cell timed out after {settings.cell_timeout:g} s"}
    wall = round(time.perf_counter() - started, 2)
    if proc.returncode != 0 or not out_path.is_file():
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return {"status": "failed", "reason": lines[-1] if lines else f"cell exited {proc.returncode}", "cell_wall_s": wall}
    return {"status": "ok", **json.loads(out_path.read_text(encoding="utf-8")), "cell_wall_s": wall}


def append_row(path: Path, row: dict) -> None:
    """One line per finished cell, flushed and fsynced: a crash later keeps it."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_plan(plan: Plan, settings: BenchSettings, out_dir: Path,
             on_row: Callable[[dict], None] | None = None, paths_from: Path | None = None) -> list[dict]:
    """Measure every cell `settings.repeats` times in interleaved rounds; a cell's row is
    appended to results.jsonl as soon as its last repeat finishes. Artifact paths in the rows
    are relative to `paths_from` (default: out_dir)."""
    # before the results files are rewritten: committed results being replaced are no uncommitted code
    env = fingerprint()
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / RESULTS_JSONL
    jsonl.write_text("", encoding="utf-8")  # a new benchmark starts a new results file
    repeats_jsonl = out_dir / REPEATS_JSONL
    repeats_jsonl.unlink(missing_ok=True)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    measured: list[list[dict]] = [[] for _ in plan.cells]
    rows = []
    runs = sum(not cell.skipped for cell in plan.cells) * settings.repeats  # skipped cells take no time
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp, progress_bar("bench", total=runs) as bar:
        for repeat in range(1, settings.repeats + 1):
            last_round = repeat == settings.repeats
            for i, cell in enumerate(plan.cells):
                row = base_row(cell, run_id, env, paths_from or out_dir)
                if cell.skipped:
                    if last_round:
                        rows.append(_finish(row | {"status": "skipped", "reason": cell.skipped}, jsonl, on_row))
                    continue
                round_note = f" (repeat {repeat}/{settings.repeats})" if settings.repeats > 1 else ""
                label = cell_label(cell, row["shape"]) + round_note
                log.info("cell %d/%d: %s", i + 1, len(plan.cells), label)
                bar.describe(f"bench: {label}")
                # Accuracy does not change between repeats: measured in the first only.
                result = run_cell(cell if repeat == 1 else replace(cell, accuracy=False), settings, Path(tmp))
                bar.advance()
                measured[i].append(result)
                if settings.repeats > 1:
                    append_row(repeats_jsonl, row | result | {"repeat": repeat})
                if last_round:
                    rows.append(_finish(row | combine_repeats(measured[i]), jsonl, on_row))
    return rows


def _finish(row: dict, jsonl: Path, on_row: Callable[[dict], None] | None) -> dict:
    row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    append_row(jsonl, row)
    if on_row:
        on_row(row)
    return row


def combine_repeats(results: list[dict]) -> dict:
    """One cell's repeats as one row: the median of each latency/throughput statistic,
    the first successful repeat's other fields (accuracy, memory), and each repeat's p50
    with their spread ((max - min) / median)."""
    ok = [r for r in results if r["status"] == "ok"]
    if len(results) == 1 or not ok:
        return results[0]
    row = dict(ok[0])
    for key in REPEATED_STATS:
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            row[key] = round(statistics.median(values), 4)
    row["iterations"] = sum(r.get("iterations", 0) for r in ok)
    p50s = [r["p50_ms"] for r in ok]
    row["repeats"] = {"n": len(results), "failed": len(results) - len(ok), "p50_ms": p50s, "spread": _spread(p50s)}
    paired = [r["paired_speedup"] for r in ok if r.get("paired_speedup") is not None]
    if paired:
        row["repeats"] |= {"paired_speedup": paired, "paired_spread": _spread(paired)}
    return row


def _spread(values: list[float]) -> float:
    """(max - min) / median: how far a cell's repeats disagree."""
    return round((max(values) - min(values)) / statistics.median(values), 4)


def run_benchmark(models, settings: BenchSettings, out_dir: Path, where: str = "spec",
                  on_row: Callable[[dict], None] | None = None, paths_from: Path | None = None) -> list[dict]:
    """Plan (every input error raised before anything runs), measure, write the reports.
    paths_from: the directory the rows' artifact paths are relative to (default: out_dir)."""
    from compress.bench.plan import build_plan
    from compress.bench.report import write_reports

    plan = build_plan(models, settings, where)
    for note in plan.notes:
        log.warning(note)
    rows = run_plan(plan, settings, out_dir, on_row, paths_from)
    write_reports(rows, out_dir)
    return rows
