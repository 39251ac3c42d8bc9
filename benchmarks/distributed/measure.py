"""Wall time per training step of `compress run` on 1 process against N processes under
torchrun, at the same global batch (the quickstart's fine-tune of the packaged MiniLM-L6 on
the packaged Rotten Tomatoes snippets, cut to a fixed number of optimizer steps).

    python benchmarks/distributed/measure.py [--processes 2] [--steps 24] [--repeats 3]

Runs alternate (1, N, 1, N, ...) so a change in the machine's load hits both; each run
records the training stage's own seconds and steps (stage.json) and the whole command's
wall time. Writes benchmarks/results/distributed/steps.jsonl (one row per run) and
results.md (rendered from the JSONL by `render`, which tests/test_distributed_results.py
re-runs)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = Path(__file__).with_name("finetune-steps.yaml")
OUT = ROOT / "benchmarks" / "results" / "distributed"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_line(processes: int, recipe: Path, out: Path) -> list[str]:
    run = ["-m", "compress", "run", str(recipe), "--out", str(out)]
    if processes == 1:
        return [sys.executable, *run]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(_port()), *run]


def one_run(processes: int, global_batch: int, steps: int, work: Path, repeat: int) -> dict:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["name"] = f"p{processes}-r{repeat}"
    stage = raw["stages"][0]
    stage.update(batch_size=global_batch // processes, max_steps=steps)
    recipe = work / f"{raw['name']}.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = launch_line(processes, recipe, work / "runs")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    record = json.loads((work / "runs" / raw["name"] / "01-finetune" / "stage.json").read_text())
    training = record["training"]
    return {
        "processes": processes, "repeat": repeat, "steps": training["steps"],
        "per_device_batch_size": training["per_device_batch_size"],
        "global_batch_size": training["global_batch_size"],
        "threads_per_process": training["threads_per_process"],
        "training_seconds": training["seconds"],
        "seconds_per_step": round(training["seconds"] / training["steps"], 4),
        "command_wall_seconds": round(wall, 1),
        "first_loss": training["first_loss"], "final_loss": training["final_loss"],
        "launch": " ".join(["python", *cmd[1:]]).replace(str(work), "<tmp>"),
    }


def render(rows: list[dict]) -> str:
    """The Markdown table of steps.jsonl: medians per process count, and the ratio to 1 process."""
    from compress.report import md_table

    by = {}
    for r in rows:
        by.setdefault(r["processes"], []).append(r)
    base = statistics.median(r["seconds_per_step"] for r in by[1])
    table = []
    for n, runs in sorted(by.items()):
        per_step = statistics.median(r["seconds_per_step"] for r in runs)
        table.append([
            str(n), str(runs[0]["per_device_batch_size"]), str(runs[0]["global_batch_size"]),
            str(runs[0]["threads_per_process"]), str(len(runs)), f"{per_step:.3f}",
            f"{base / per_step:.2f}x", f"{statistics.median(r['command_wall_seconds'] for r in runs):.1f}",
        ])
    return md_table(["processes", "batch per process", "global batch", "threads per process", "runs",
                     "s per step (median)", "speed vs 1 process", "whole command s (median)"], table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from compress.environment import environment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in (1, args.processes):
                rows.append(one_run(n, args.global_batch, args.steps, Path(tmp), repeat))
                print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    env = environment()
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or None
    with (OUT / "steps.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r, "cpu": env["processor"], "instruction_sets": env["instruction_sets"],
                                "cores": env["cpu_count"], "git_commit": commit}) + "\n")
    (OUT / "results.md").write_text(render(rows), encoding="utf-8")
    print(render(rows))


if __name__ == "__main__":
    main()
