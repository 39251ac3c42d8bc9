"""ROUGE-1/2/L on XSum (compress.xsum) of a packaged causal LM, an ONNX decoder export or a
transformers checkpoint, with the fixed protocol stated in compress/xsum.py.

    python benchmarks/causal_lm/rouge_xsum.py fetch [--archive bigbench-1.0.0.tar.gz]
    python benchmarks/causal_lm/rouge_xsum.py eval --model package runs/smollm2/05-package \
        --out benchmarks/results/causal-lm/rouge/int4.json
    python benchmarks/causal_lm/rouge_xsum.py eval --model torch ~/.cache/compress/builtin/smollm2-135m ...

fetch puts gem/xsum/task.json of the bigbench 1.0.0 source archive into the user cache
($XDG_CACHE_HOME/compress/data/xsum/task.json; never the repository). eval writes one JSON
file: the three ROUGE F-measures, the settings, every generated summary with its scores (the
articles and references stay out: BIG-bench's text is not redistributed), wall time and the
environment fingerprint. Default subset: the first 50 articles cut to 400 tokens,
at most 48 new tokens (a few minutes for a 135M model on 2 cores)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def summarizer(kind: str, path: Path, args, work: Path):
    """(summarize, tokenizers.Tokenizer) for the model."""
    from tokenizers import Tokenizer

    from compress import xsum

    if kind == "torch":
        return xsum.torch_summarizer(path, args.max_new_tokens, args.threads), Tokenizer.from_file(
            str(path / "tokenizer.json"))
    from compress.runtime import Predictor

    if kind == "onnx":  # an export (or a weight-quantized graph) without deploy.json: package it first
        from compress.artifacts import ONNXModel
        from compress.stages.package.decoder import build_decoder_package

        build_decoder_package(ONNXModel(path), work / "package", path.name)
        path = work / "package"
    predictor = Predictor.load(path, threads=args.threads)
    return xsum.predictor_summarizer(predictor, args.max_new_tokens, args.batch_size), predictor.tokenizer


def main(argv: list[str]) -> int:
    from compress import xsum

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="put the XSum task file into the user cache")
    fetch.add_argument("--archive", type=Path, help="a downloaded bigbench-1.0.0.tar.gz (default: pip downloads it)")
    ev = sub.add_parser("eval", help="ROUGE of one model")
    ev.add_argument("--model", nargs=2, required=True, metavar=("KIND", "PATH"),
                    help="package (a package directory), onnx (an ONNX decoder dir) or torch (a checkpoint)")
    ev.add_argument("--documents", type=int, default=50)
    ev.add_argument("--document-tokens", type=int, default=400)
    ev.add_argument("--max-new-tokens", type=int, default=48)
    ev.add_argument("--batch-size", type=int, default=4, help="prompts per generate batch (packaged models)")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--data", type=Path, help="the XSum task.json (default: the cache; run fetch first)")
    ev.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(xsum.fetch_xsum(args.archive))
        return 0

    from compress.bench.runner import fingerprint

    kind, path = args.model[0], Path(args.model[1])
    if kind not in ("package", "onnx", "torch"):
        parser.error(f"--model {kind}: KIND must be package, onnx or torch")
    data = args.data or xsum.xsum_cache()
    if not data.is_file():
        parser.error(f"{data}: no XSum task file: run `python {Path(__file__).relative_to(ROOT)} fetch` first")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compress-rouge-") as work:
        summarize, tokenizer = summarizer(kind, path, args, Path(work))
        result = xsum.evaluate_xsum(summarize, tokenizer, data, args.documents, args.document_tokens)
    wall = round(time.perf_counter() - started, 1)
    record = {"model": str(path), "kind": kind, **{t: result[t] for t in xsum.ROUGE_TYPES},
              "documents": result["documents"], "document_tokens": args.document_tokens,
              "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "prompt": xsum.INSTRUCTION + " (chat)",
              "wall_s": wall, "command": shlex.join(["python", *sys.argv]), "env": fingerprint(),
              "examples": result["examples"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("model", *xsum.ROUGE_TYPES, "documents", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
