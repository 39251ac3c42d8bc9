"""Why 2-thread latency cells move between repeats on a 2-core machine, and 1-thread ones do
not: the same ONNX model timed at batch 1 in fresh processes, interleaved across three
settings (1 thread; 2 threads with ONNX Runtime's spin-waiting worker, its default; 2 threads
without spinning), each process reporting its own p50.

    .venv/bin/python benchmarks/steadiness/thread_modes.py runs/quickstart/04-ptq/model.onnx \
        --out benchmarks/results/steadiness

Writes processes.jsonl (one line per process) and summary.json (per setting: median p50 and
the spread (max - min) / median over processes). Inputs: 50 fixed random token sequences of
12-39 tokens (the quickstart eval set's range), each timed 6 times per process."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"1 thread": (1, "1"), "2 threads, spinning": (2, "1"), "2 threads, no spinning": (2, "0")}


def open_session(model: str, threads: int, spin: str = "1"):
    """An ONNX Runtime CPU session with `threads` intra-op threads; spin "0" turns spinning off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def random_feeds(session) -> list[dict]:
    """50 fixed random token sequences of 12-39 tokens (the quickstart eval set's range), batch 1."""
    import numpy as np

    names = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    feeds = []
    for length in rng.integers(12, 40, size=50):
        ids = rng.integers(1000, 20000, size=(1, int(length))).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append({k: v for k, v in feed.items() if k in names})
    return feeds


def measure(model: str, threads: int, spin: str) -> float:
    """One process's batch-1 p50 in ms (runs in the child)."""
    session = open_session(model, threads, spin)
    feeds = random_feeds(session)
    for feed in feeds[:10]:
        session.run(None, feed)
    times = []
    for _ in range(6):
        for feed in feeds:
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(measure(args.model, int(args.child[0]), args.child[1]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (args.out / "processes.jsonl").open("w") as f:
        for round_ in range(1, args.rounds + 1):  # interleaved: a load change hits every setting alike
            for name, (threads, spin) in SETTINGS.items():
                out = subprocess.run([sys.executable, __file__, args.model, "--out", str(args.out), "--child",
                                      str(threads), spin], capture_output=True, text=True, check=True)
                row = {"round": round_, "setting": name, "threads": threads, "allow_spinning": spin == "1",
                       "p50_ms": round(float(out.stdout.strip().splitlines()[-1]), 4)}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
    summary = {"command": " ".join(["python", *sys.argv]), "model": args.model, "cpu": platform.processor(),
               "rounds": args.rounds, "settings": {}}
    for name in SETTINGS:
        p50s = [r["p50_ms"] for r in rows if r["setting"] == name]
        median = statistics.median(p50s)
        summary["settings"][name] = {"p50_ms": p50s, "median_ms": round(median, 3),
                                     "spread": round((max(p50s) - min(p50s)) / median, 3)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["settings"], indent=2))


if __name__ == "__main__":
    main()
