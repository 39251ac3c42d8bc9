"""Why ONNX Runtime's S8S8 (int8 activations × int8 weights) path is slower than fp32 on this
project's CPUs although they have AVX512-VNNI: one 32×384×1536 GEMM (MiniLM's FFN input projection on 32
tokens) as fp32 MatMul, U8S8 MatMulInteger and S8S8 MatMulInteger, 1 thread,
interleaved rounds. Writes s8s8_kernels.json beside this file (the environment included).

    python benchmarks/results/quantization/s8s8_kernels.py

MLAS (onnxruntime/core/mlas/lib/platform.cpp, mlasi.h) gives x86-64 an S8S8 GEMM kernel only
on CPUs with AVX-VNNI-INT8 (VPDPBSSD); elsewhere GemmS8S8Dispatch stays
MlasGemmQuantDispatchDefault, the portable scalar kernel. AVX512-VNNI's VPDPBUSD multiplies
unsigned by signed bytes: it serves U8S8 only."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
M, K, N = 32, 384, 1536


def session(a_type: int | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if a_type is None:
        w = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")
        node, out, at = helper.make_node("MatMul", ["a", "w"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    else:
        w = numpy_helper.from_array(rng.integers(-127, 127, (K, N)).astype(np.int8), "w")
        node, out, at = helper.make_node("MatMulInteger", ["a", "w"], ["y"]), TensorProto.INT32, a_type
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", at, [M, K])],
                              [helper.make_tensor_value_info("y", out, [M, N])], [w])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main(rounds: int = 7, calls: int = 50) -> dict:
    from onnx import TensorProto

    from compress.environment import environment

    rng = np.random.default_rng(1)
    cases = {"fp32 MatMul": (session(None), rng.standard_normal((M, K)).astype(np.float32)),
             "U8S8 MatMulInteger": (session(TensorProto.UINT8), rng.integers(0, 255, (M, K)).astype(np.uint8)),
             "S8S8 MatMulInteger": (session(TensorProto.INT8), rng.integers(-127, 127, (M, K)).astype(np.int8))}
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (s, a) in cases.items():
            for _ in range(3):
                s.run(None, {"a": a})
            start = time.perf_counter()
            for _ in range(calls):
                s.run(None, {"a": a})
            per_round[name].append((time.perf_counter() - start) / calls * 1e3)
    medians = {k: float(np.median(v)) for k, v in per_round.items()}
    result = {"gemm": [M, K, N], "threads": 1, "rounds": rounds, "calls_per_round": calls,
              "median_ms": {k: round(v, 4) for k, v in medians.items()},
              "round_ms": {k: [round(x, 4) for x in v] for k, v in per_round.items()},
              "s8s8_vs_fp32": round(medians["S8S8 MatMulInteger"] / medians["fp32 MatMul"], 2),
              "s8s8_vs_u8s8": round(medians["S8S8 MatMulInteger"] / medians["U8S8 MatMulInteger"], 2),
              "environment": environment()}
    Path(__file__).with_name("s8s8_kernels.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: r[k] for k in ("median_ms", "s8s8_vs_fp32", "s8s8_vs_u8s8")}, indent=1))
