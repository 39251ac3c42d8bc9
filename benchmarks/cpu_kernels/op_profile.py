"""Where an encoder's forward pass spends its time, per operator type, from ONNX Runtime's own
profiler: one model at one shape (fixed random token ids, full attention mask), in a fresh
process per model, interleaved over `--rounds`.

    .venv/bin/python benchmarks/cpu_kernels/op_profile.py \\
        runs/quickstart-ptq-unsplit/03-ptq/model.onnx runs/quickstart/04-ptq/model.onnx \\
        --shape 32x40 --threads 1 --out benchmarks/results/cpu-kernels/op-profile-b32.json

Per model: the median wall time of the profiled runs and, per op type, the kernel
milliseconds per forward pass and the number of nodes (the session's graph, after ORT's own
fusions). The profiler adds a little time to every node; compare models within one file."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def profile(model: str, batch: int, seq: int, threads: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(batch, seq)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    warmup = 5
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    kernel_us, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel_us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    passes = warmup + runs  # the profiler records every run, warm-up included
    return {"wall_ms": statistics.median(times) * 1e3,
            "ops": {op: {"kernel_ms": us / passes / 1e3, "nodes": nodes[op] // passes}
                    for op, us in kernel_us.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--shape", default="32x40", help="BATCHxSEQ")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch, seq = (int(x) for x in args.shape.split("x"))
    if args.child:
        print(json.dumps(profile(args.models[0], batch, seq, args.threads, args.runs)))
        return
    if args.out is None:
        parser.error("--out is required")
    per_model = {m: [] for m in args.models}
    for _ in range(args.rounds):
        for m in args.models:
            out = subprocess.run([sys.executable, __file__, m, "--shape", args.shape, "--threads", str(args.threads),
                                  "--runs", str(args.runs), "--child"], check=True, capture_output=True, text=True)
            per_model[m].append(json.loads(out.stdout.splitlines()[-1]))
    result = {"command": "python benchmarks/cpu_kernels/op_profile.py " + " ".join(sys.argv[1:]),
              "shape": {"batch": batch, "seq": seq}, "threads": args.threads, "rounds": args.rounds,
              "models": {}}
    for m, rounds in per_model.items():
        ops = sorted({op for r in rounds for op in r["ops"]})
        result["models"][m] = {
            "wall_ms_median": round(statistics.median(r["wall_ms"] for r in rounds), 3),
            "wall_ms_rounds": [round(r["wall_ms"], 3) for r in rounds],
            "ops": {op: {"kernel_ms_median": round(statistics.median(r["ops"].get(op, {}).get("kernel_ms", 0.0)
                                                                     for r in rounds), 3),
                         "nodes": max(r["ops"].get(op, {}).get("nodes", 0) for r in rounds)} for op in ops}}
        top = sorted(result["models"][m]["ops"].items(), key=lambda kv: -kv[1]["kernel_ms_median"])[:6]
        print(f"{m}: {result['models'][m]['wall_ms_median']:.2f} ms; "
              + ", ".join(f"{op} {v['kernel_ms_median']:.2f} ({v['nodes']})" for op, v in top))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
