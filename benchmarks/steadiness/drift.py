"""Is a 2-thread cell's mode a property of its process, or of the moment? One process per
setting times back-to-back windows (one pass over 50 fixed inputs each, ~0.1-0.3 s) for a
fixed time and records every window's p50; the settings run in interleaved rounds:

- "1 thread" and "2 threads": the INT8 model alone (ONNX Runtime's default spinning);
- "2 threads, paired": the INT8 model and its fp32 export in alternating windows on the same
  inputs (what `compress bench` does with `paired: true`), recording fp32 / INT8 per pair.

    .venv/bin/python benchmarks/steadiness/drift.py runs/quickstart/04-ptq/model.onnx \
        runs/quickstart/02-export_onnx/model.onnx --out benchmarks/results/steadiness

Writes drift.jsonl (one line per process: its windows) and drift.json (per setting: the
median and the spread (max - min) / median of the processes' medians, and of the windows
inside a process)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# thread_modes.py sits in this directory: the same sessions and inputs as its processes
from thread_modes import open_session, random_feeds

SETTINGS = ("1 thread", "2 threads", "2 threads, paired")


def _window(session, feeds) -> tuple[float, float]:
    """One pass over the inputs: (p50 per call in ms, the pass's total in s)."""
    times = []
    for feed in feeds:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, sum(times)


def child(setting: str, model: str, reference: str, seconds: float) -> dict:
    threads = 1 if setting == "1 thread" else 2
    session = open_session(model, threads)
    feeds = random_feeds(session)
    ref = open_session(reference, threads) if setting.endswith("paired") else None
    for s in (session, ref):
        if s is not None:
            _window(s, feeds[:10])
    windows, ratios = [], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        p50, total = _window(session, feeds)
        windows.append(round(p50, 4))
        if ref is not None:
            ratios.append(round(_window(ref, feeds)[1] / total, 4))
    return {"setting": setting, "window_p50_ms": windows, **({"window_ratio": ratios} if ratios else {})}


def _spread(values: list[float]) -> float:
    return round((max(values) - min(values)) / statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("reference", help="the fp32 model the paired setting alternates with")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.reference, args.seconds)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (args.out / "drift.jsonl").open("w") as f:
        for round_ in range(1, args.rounds + 1):  # interleaved: a load change hits every setting alike
            for setting in SETTINGS:
                out = subprocess.run([sys.executable, __file__, args.model, args.reference, "--out", str(args.out),
                                      "--seconds", str(args.seconds), "--child", setting],
                                     capture_output=True, text=True, check=True)
                row = {"round": round_, **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
    summary = {"command": " ".join(["python", *sys.argv]), "model": args.model, "reference": args.reference,
               "cpu": platform.processor(), "rounds": args.rounds, "seconds_per_process": args.seconds, "settings": {}}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        key = "window_ratio" if setting.endswith("paired") else "window_p50_ms"
        medians = [statistics.median(r[key]) for r in mine]
        summary["settings"][setting] = {
            "measure": "fp32 / INT8 time per window pair" if key == "window_ratio" else "p50 per window, ms",
            "process_medians": [round(m, 3) for m in medians], "median": round(statistics.median(medians), 3),
            "spread_between_processes": _spread(medians),
            "spread_within_process": [_spread(r[key]) for r in mine],
            "windows_per_process": [len(r[key]) for r in mine]}
    (args.out / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["settings"], indent=2))


if __name__ == "__main__":
    main()
