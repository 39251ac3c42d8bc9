"""Batch-1 ONNX Runtime CPU latency of several ONNX models, interleaved: every round runs
each model (in a fresh random order) on the same real eval snippets, so load from other
processes on a shared machine falls on all models alike. Prints a Markdown table and, with
--out FILE, writes the raw result (every sample's summary, the environment and this command)
as JSON: the file a README's figures are read from.

usage: python interleaved_latency.py [--out FILE] RUN_DIR NAME=MODEL_DIR [NAME=MODEL_DIR ...]
RUN_DIR supplies the recipe's eval split (its recipe.resolved.yaml)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np


def main(run_dir: str, models: list[str], rounds: int = 30, per_round: int = 20, threads: int = 2,
         out: str | None = None) -> None:
    import yaml

    from compress.artifacts import ONNXModel
    from compress.data import encode, load_splits, pad_batch
    from compress.models import load_tokenizer
    from compress.recipe import Recipe
    from compress.sessions import ORTSession

    recipe = Recipe.model_validate(yaml.safe_load((Path(run_dir) / "recipe.resolved.yaml").read_text()))
    named = [m.split("=", 1) for m in models]
    first = ONNXModel(Path(named[0][1]))
    tokenizer = load_tokenizer(first.path)
    eval_split = load_splits(recipe.data, recipe.task).eval
    encoded = encode(tokenizer, eval_split, recipe.data.max_length)[: rounds * per_round]
    sessions = {name: ORTSession(ONNXModel(Path(path)), threads) for name, path in named}
    feeds = {name: [pad_batch([e], s.input_names, s.pad_id) for e in encoded] for name, s in sessions.items()}
    for name, s in sessions.items():  # warm-up
        for f in feeds[name][:20]:
            s.run(f)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    rng = random.Random(0)
    for r in range(rounds):
        order = list(sessions)
        rng.shuffle(order)
        for name in order:
            for f in feeds[name][r * per_round : (r + 1) * per_round]:
                start = time.perf_counter()
                sessions[name].run(f)
                samples[name].append((time.perf_counter() - start) * 1000)
    lengths = [len(e["input_ids"]) for e in encoded]
    base = float(np.median(samples[named[0][0]]))
    print(f"batch 1, {threads} threads, {len(encoded)} real eval snippets (median {int(np.median(lengths))} tokens), "
          f"{rounds} interleaved rounds")
    print("| model | p50 ms | p90 ms | speedup vs first |\n|---|---|---|---|")
    result = {"threads": threads, "rounds": rounds, "per_round": per_round, "examples": len(encoded),
              "median_tokens": int(np.median(lengths)), "models": {}}
    for name, values in samples.items():
        p50, p90 = np.percentile(values, [50, 90])
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {base / p50:.2f}x |")
        result["models"][name] = {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
                                  "speedup_vs_first": round(base / float(p50), 3), "calls": len(values),
                                  # the median of each round's p50: how far a round moved
                                  "round_p50_ms": [round(float(np.median(values[i:i + per_round])), 4)
                                                   for i in range(0, len(values), per_round)]}
    if out:
        import json

        from compress.environment import environment

        result["environment"] = environment()
        Path(out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    args = sys.argv[1:]
    target = None
    if args[:1] == ["--out"]:
        target, args = args[1], args[2:]
    main(args[0], args[1:], out=target)
