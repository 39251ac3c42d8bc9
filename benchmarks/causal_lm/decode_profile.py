"""Where a decode step's time goes: ONNX Runtime's profiler over greedy decode steps of one or
more causal-LM packages (or any directory with a decoder model.onnx), per operator type.

    python benchmarks/causal_lm/decode_profile.py \
        --model 'without the decoder rewrites' runs/causal-lm.unfused/04-package \
        --model 'causal-lm package' runs/causal-lm/04-package \
        --out benchmarks/results/causal-lm/decode-profile.json

Each model: a 64-token prompt of seeded random ids, then --steps greedy steps with the
profiler on (2 threads, batch 1); reported per step: the nodes ONNX Runtime ran, kernel
milliseconds per operator type, and the KV-cache bytes a step's present tensors hold at
64 and 512 tokens of context (what a past→present interface writes anew every step)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def profile(path: Path, steps: int, threads: int, prompt: int = 64) -> dict:
    import onnxruntime as ort

    from compress.generation import Decoder, past_layout

    onnx_path = path / "model.onnx" if path.is_dir() else path
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "decode")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        signature = [{"name": i.name, "dtype": "float32", "shape": i.shape} for i in session.get_inputs()]
        layout = past_layout(signature)
        decoder = Decoder(session, layout)
        ids = np.random.default_rng(0).integers(100, 1000, size=(1, prompt))
        mask = np.ones_like(ids)
        logits, past = decoder.step(ids, mask)
        calls = 1 + steps
        for _ in range(steps):
            mask = np.concatenate([mask, np.ones((1, 1), mask.dtype)], axis=1)
            logits, past = decoder.step(logits.argmax(-1)[:, None], mask, past)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_op, count = Counter(), Counter()
    # every call runs every node once, the prefill first: skip its events
    nodes_per_call = len(kernels) // calls
    for e in kernels[nodes_per_call:]:
        op = e["args"].get("op_name", "?")
        per_op[op] += e["dur"] / 1000
        count[op] += 1
    total = sum(per_op.values())
    cache_per_token = 2 * layout["layers"] * layout["kv_heads"] * layout["head_dim"] * 4  # k and v, float32
    return {
        "decode_steps_profiled": steps,
        "nodes_per_step": round(sum(count.values()) / steps),
        "kernel_ms_per_step": round(total / steps, 3),
        "by_op": {op: {"ms_per_step": round(ms / steps, 3), "nodes_per_step": round(count[op] / steps)}
                  for op, ms in per_op.most_common()},
        "kv_cache_mb_at_context": {str(n): round(cache_per_token * n / 1e6, 1) for n in (64, 512)},
    }


def main() -> None:
    from compress.bench.generation import recorded_path, repository_root
    from compress.environment import environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs=2, action="append", metavar=("NAME", "PATH"), required=True)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = repository_root(Path.cwd())
    record = {"command": "python " + " ".join(sys.argv), "threads": args.threads, "batch_size": 1,
              "prompt_tokens": 64, "env": environment(), "models": {}}
    for name, path in args.model:
        result = profile(Path(path), args.steps, args.threads)
        record["models"][name] = {"path": recorded_path(Path(path), root), **result}
        print(json.dumps({"model": name, "nodes_per_step": result["nodes_per_step"],
                          "kernel_ms_per_step": result["kernel_ms_per_step"]}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
