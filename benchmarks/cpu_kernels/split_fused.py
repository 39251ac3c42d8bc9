"""Why optimize_onnx writes some of ONNX Runtime's fused ops back as their parts on CPU: each
fused op against the parts that compress.stages.optimize_onnx.split_fused writes for it, one node graph
each, timed on ONNX Runtime's CPU provider as a session runs it (after its own fusions).

    .venv/bin/python benchmarks/cpu_kernels/split_fused.py --out benchmarks/results/cpu-kernels

Cases: SkipLayerNormalization (encoder residual + LayerNorm, with bias) at batch-1 and
batch-32 encoder shapes; SkipSimplifiedLayerNormalization (a decoder's residual + RMSNorm) at a
decode step and a 512-token prefill; BiasGelu against Gelu alone (after dynamic INT8, ORT folds
the bias Add into the MatMul before it, so Gelu is what runs). Rounds interleave the variants;
each timing is one fresh process's median over at least `--seconds` of runs (a 2-thread session
on these 2-core machines lands in one of two speed modes per process: README "Benchmarks").
Writes results.json."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (op, shape, what it stands for)
    ("SkipLayerNormalization", (1, 22, 384), "MiniLM-L6 batch 1, a median-length snippet"),
    ("SkipLayerNormalization", (32, 40, 384), "MiniLM-L6 batch 32"),
    ("SkipLayerNormalization", (1, 22, 768), "MPNet-base batch 1"),
    ("SkipSimplifiedLayerNormalization", (1, 1, 576), "SmolLM2-135M decode step"),
    ("SkipSimplifiedLayerNormalization", (1, 512, 576), "SmolLM2-135M 512-token prefill"),
    ("BiasGelu", (1, 22, 1536), "MiniLM-L6 FFN, batch 1"),
    ("BiasGelu", (32, 40, 1536), "MiniLM-L6 FFN, batch 32"),
]


def fused_graph(op: str, shape: tuple[int, ...]):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = shape[-1]
    rng = np.random.default_rng(0)
    vector = {name: numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), name)
              for name in ("gamma", "beta", "bias")}
    if op == "BiasGelu":
        inputs, weights = ["x", "bias"], [vector["bias"]]
        node = helper.make_node(op, inputs, ["y"], domain="com.microsoft")
    elif op == "SkipSimplifiedLayerNormalization":
        inputs, weights = ["x", "skip", "gamma"], [vector["gamma"]]
        node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", epsilon=1e-5)
    else:
        inputs, weights = ["x", "skip", "gamma", "beta", "bias"], list(vector.values())
        node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", epsilon=1e-12)
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "skip")
               if n in inputs]
    graph = helper.make_graph([node], op, tensors, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              weights)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid("com.microsoft", 1)])


def variants(op: str, shape: tuple[int, ...]) -> dict:
    """The fused graph and its parts, serialized: {op or parts name: model bytes}."""
    import onnx

    from compress.stages.optimize_onnx.split_fused import split_fused_ops

    fused = fused_graph(op, shape)
    split = onnx.ModelProto()
    split.CopyFrom(fused)
    if op == "BiasGelu":  # what runs after dynamic INT8: the bias in the MatMul, Gelu on its own
        node = split.graph.node[0]
        node.op_type, node.input[:] = "Gelu", [node.input[0]]
        del split.graph.initializer[:]
        name = "Gelu (bias folded into the MatMul)"
    else:
        split_fused_ops(split, [op])
        name = " + ".join(n.op_type for n in split.graph.node)
    return {op: fused.SerializeToString(), name: split.SerializeToString()}


def session_ops(model: bytes) -> list[str]:
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "session.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def time_once(model: bytes, shape: tuple[int, ...], threads: int, seconds: float) -> float:
    """Median ms of one session's runs over at least `seconds`."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feed = {i.name: rng.standard_normal(shape).astype(np.float32) for i in session.get_inputs()}
    for _ in range(20):
        session.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 50:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_in_child(case: int, variant: int, threads: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(case), str(variant), str(threads), str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    if args.child:
        case, variant, threads, seconds = args.child
        op, shape, _ = CASES[int(case)]
        model = list(variants(op, shape).values())[int(variant)]
        print(time_once(model, shape, int(threads), float(seconds)))
        return
    if args.out is None:
        parser.error("--out is required")
    rows = []
    for case, (op, shape, what) in enumerate(CASES):
        models = variants(op, shape)
        for threads in args.threads:
            timings = {name: [] for name in models}
            for _ in range(args.rounds):
                for variant, name in enumerate(models):
                    timings[name].append(time_in_child(case, variant, threads, args.seconds))
            medians = {name: statistics.median(t) for name, t in timings.items()}
            fused_ms, (parts_name, parts_ms) = medians[op], [(n, m) for n, m in medians.items() if n != op][0]
            rows.append({"op": op, "shape": list(shape), "stands_for": what, "threads": threads,
                         "fused_ms": round(fused_ms, 4), "parts": parts_name, "parts_ms": round(parts_ms, 4),
                         "fused_over_parts": round(fused_ms / parts_ms, 2),
                         "session_ops": {name: session_ops(model) for name, model in models.items()},
                         "rounds_ms": {name: [round(t, 4) for t in ts] for name, ts in timings.items()}})
            print(f"{op:34s} {str(shape):15s} {threads} thr: fused {fused_ms:8.3f} ms  parts {parts_ms:8.3f} ms "
                  f"({fused_ms / parts_ms:.2f}x)")
    args.out.mkdir(parents=True, exist_ok=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    (args.out / "results.json").write_text(json.dumps({
        "command": f"python benchmarks/cpu_kernels/split_fused.py --out {args.out.as_posix()}",
        "onnxruntime": ort.__version__, "machine": platform.machine(), "load_average_at_end": load,
        "rounds": args.rounds, "min_seconds_per_timing": args.seconds, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
