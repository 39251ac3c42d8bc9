"""The generation benchmark of a causal LM: time to first token (the prefill of a prompt of
L tokens, batch B, up to the first new token) and steady-state decode tokens/s (N more
tokens after the prefill, eos ignored), with peak RSS and model size, per target.

Every target runs the same algorithm: a seeded random prompt of token ids (the same ids
on every target), one forward pass over the prompt with an empty KV cache, then N
single-token steps feeding the cache back, each picking the argmax. torch-cpu steps a
transformers model with a DynamicCache; ort-cpu steps the ONNX decoder graph through
compress.generation.Decoder (what Predictor.generate runs). A peer (llama.cpp) plugs in
with a stepper of its own (benchmarks/peers/llama_cpp_bench.py).

Like the classification benchmark (compress.bench.runner), each cell runs in a fresh
process (python -m compress.bench.generation JOB OUT) with its threads set, and every
row carries the environment fingerprint; results go to results.jsonl and results.md."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

TARGETS = ("torch-cpu", "ort-cpu")
CELL_MODULE = [sys.executable, "-m", "compress.bench.generation"]


class Stepper(Protocol):
    """One model on one runtime, stepped by hand; each call returns the argmax next token per row."""

    def prefill(self, ids: np.ndarray) -> np.ndarray: ...  # [batch, prompt] -> [batch]; starts a new cache
    def decode(self, ids: np.ndarray) -> np.ndarray: ...  # [batch] -> [batch]; one step with the cache


@dataclass(frozen=True)
class GenerationCell:
    name: str  # the row label (e.g. fp32, int4)
    target: str  # torch-cpu, ort-cpu, or a peer's (llama.cpp-cpu)
    path: str  # a torch checkpoint dir, an ONNX decoder dir (a package or an export), a GGUF file
    batch_size: int
    prompt_len: int
    new_tokens: int
    threads: int
    timed_runs: int = 3  # timed prefill + decode runs (after one warm-up run)
    token_range: tuple[int, int] = (0, 0)  # prompt ids are drawn from [low, high): no special tokens
    command: list[str] = field(default_factory=lambda: list(CELL_MODULE))  # how to run the cell's process
    skipped: str | None = None  # why the cell cannot run (a peer without batching), or None
    source: str | None = None  # how the row names the model when given by spec ('builtin:smollm2-135m')


# ---------------------------------------------------------------------------- steppers


class ORTStepper:
    """The ONNX decoder graph of a directory (model.onnx with past) on ONNX Runtime's CPU
    provider, through compress.generation.Decoder."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        from compress.generation import Decoder, past_layout

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        session = ort.InferenceSession(str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16"}
        signature = [{"name": i.name, "dtype": dtypes.get(i.type, i.type), "shape": i.shape}
                     for i in session.get_inputs()]
        self.decoder = Decoder(session, past_layout(signature))

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.mask = np.ones_like(ids)
        logits, self.past = self.decoder.step(ids, self.mask)
        return logits.argmax(-1)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        self.mask = np.concatenate([self.mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
        logits, self.past = self.decoder.step(ids[:, None].astype(np.int64), self.mask, self.past)
        return logits.argmax(-1)


class TorchStepper:
    """A transformers causal LM in fp32 eager mode with a DynamicCache: the logits of the
    last position only, as transformers' generate computes them."""

    def __init__(self, path: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def _forward(self, ids, mask, positions):
        with self.torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        from transformers import DynamicCache

        torch = self.torch
        self.cache = DynamicCache()
        ids = torch.from_numpy(ids)
        self.mask = torch.ones_like(ids)
        positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        return self._forward(ids, self.mask, positions).numpy()

    def decode(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        self.mask = torch.cat([self.mask, torch.ones((len(ids), 1), dtype=self.mask.dtype)], dim=1)
        positions = torch.full((len(ids), 1), self.mask.shape[1] - 1)
        return self._forward(torch.from_numpy(ids)[:, None], self.mask, positions).numpy()


def open_stepper(target: str, path: Path, threads: int) -> Stepper:
    if target == "ort-cpu":
        return ORTStepper(path, threads)
    if target == "torch-cpu":
        return TorchStepper(path, threads)
    raise ValueError(f"generation benchmark: unknown target {target!r} (known: {', '.join(TARGETS)})")


def model_size_bytes(target: str, path: Path) -> int:
    """The model's weights on disk: the ONNX graph (and external data), the safetensors, the GGUF file."""
    if path.is_file():
        return path.stat().st_size
    pattern = "model.onnx*" if target.startswith("ort") else "*.safetensors"
    return sum(f.stat().st_size for f in path.glob(pattern))


# ---------------------------------------------------------------------------- one cell


def measure(stepper: Stepper, cell: dict) -> dict:
    """One warm-up run, then `repeats` timed runs of prefill + new_tokens decode steps."""
    from compress.bench.timing import latency_percentiles

    rng = np.random.default_rng(0)
    low, high = cell["token_range"]
    ids = rng.integers(low, high, size=(cell["batch_size"], cell["prompt_len"]), dtype=np.int64)
    ttft, steps, decode_s = [], [], []
    for run in range(cell["timed_runs"] + 1):
        t0 = time.perf_counter()
        token = stepper.prefill(ids)
        t1 = time.perf_counter()
        run_steps = []
        for _ in range(cell["new_tokens"]):
            s = time.perf_counter()
            token = stepper.decode(token)
            run_steps.append(time.perf_counter() - s)
        if run == 0:
            continue  # warm-up: first-call allocations and kernel selection
        ttft.append((t1 - t0) * 1000)
        steps.extend(s * 1000 for s in run_steps)
        decode_s.append(sum(run_steps))
    tokens_per_s = [cell["batch_size"] * cell["new_tokens"] / s for s in decode_s]
    ttft_stats = latency_percentiles(ttft, 3)
    step_stats = latency_percentiles(steps, 3)
    return {
        "ttft_p50_ms": ttft_stats["p50_ms"], "ttft_p90_ms": ttft_stats["p90_ms"], "ttft_mean_ms": ttft_stats["mean_ms"],
        "decode_tokens_per_s": round(float(np.median(tokens_per_s)), 3),
        "decode_tokens_per_s_runs": [round(x, 3) for x in tokens_per_s],
        "decode_step_p50_ms": step_stats["p50_ms"], "decode_step_p90_ms": step_stats["p90_ms"],
        "prefill_tokens_per_s": round(cell["batch_size"] * cell["prompt_len"] / (ttft_stats["p50_ms"] / 1000), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
    }


def open_cell_stepper(cell: dict) -> Stepper:
    return open_stepper(cell["target"], Path(cell["path"]), cell["threads"])


def run_cell_here(cell: dict, stepper_factory: Callable[[dict], Stepper] = open_cell_stepper) -> dict:
    """Open the model (timed) and measure it in this process."""
    path = Path(cell["path"])
    started = time.perf_counter()
    stepper = stepper_factory(cell)
    load_s = time.perf_counter() - started
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = measure(stepper, cell)
    return {**result, "rss_after_load_mb": round(rss_loaded, 1), "load_s": round(load_s, 3),
            "size_bytes": model_size_bytes(cell["target"], path)}


def cell_main(argv: list[str], stepper_factory: Callable[[dict], Stepper] = open_cell_stepper) -> int:
    """A cell process: JOB (a GenerationCell as JSON) -> OUT (its result as JSON)."""
    job, out = Path(argv[0]), Path(argv[1])
    result = run_cell_here(json.loads(job.read_text(encoding="utf-8")), stepper_factory)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out)
    return 0


# ---------------------------------------------------------------------------- the run


def run_cell(cell: GenerationCell, work: Path, timeout: float) -> dict:
    """Measure one cell in a fresh process with its thread count in the environment."""
    job, out = work / "job.json", work / "result.json"
    out.unlink(missing_ok=True)
    job.write_text(json.dumps(asdict(cell)), encoding="utf-8")
    threads = str(cell.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([*cell.command, str(job), str(out)], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"cell timed out after {timeout:g} s"}
    wall = round(time.perf_counter() - started, 2)
    if proc.returncode != 0 or not out.is_file():
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return {"status": "failed", "reason": lines[-1] if lines else f"cell exited {proc.returncode}",
                "cell_wall_s": wall}
    return {"status": "ok", **json.loads(out.read_text(encoding="utf-8")), "cell_wall_s": wall}


def run_generation_bench(cells: list[GenerationCell], out_dir: Path, timeout: float = 1800,
                         on_row: Callable[[dict], None] | None = None, command: str | None = None) -> list[dict]:
    """Every cell in order, one JSONL row each as it finishes (a crash keeps the finished
    rows), then results.md. command: how the run was started, for the table's footnote."""
    import tempfile

    from compress.bench.runner import append_row, fingerprint

    env = fingerprint() | ({"command": command} if command else {})  # before results.jsonl is rewritten
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "results.jsonl"
    jsonl.write_text("", encoding="utf-8")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    repository = repository_root(out_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compress-genbench-") as tmp:
        for cell in cells:
            row = {"run_id": run_id, "model": cell.name, "target": cell.target,
                   "path": cell.source or recorded_path(cell.path, repository), "batch_size": cell.batch_size,
                   "prompt_len": cell.prompt_len, "new_tokens": cell.new_tokens, "threads": cell.threads,
                   "timed_runs": cell.timed_runs}
            result = ({"status": "skipped", "reason": cell.skipped} if cell.skipped
                      else run_cell(cell, Path(tmp), timeout))
            row |= result | {"env": env, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            append_row(jsonl, row)
            rows.append(row)
            if on_row:
                on_row(row)
    (out_dir / "results.md").write_text(markdown_table(rows), encoding="utf-8")
    return rows


def recorded_path(path: str | Path, repository: Path | None) -> str:
    """How a results row names a model, never by where one machine keeps it: from the
    repository root when it lies inside (runs/causal-lm/04-package); a built-in model's cache
    directory by its 'builtin:' name; anything else (an installed package's file, a directory
    elsewhere) by its bare name."""
    from compress.locations import BUILTIN_PREFIX
    from compress.models import builtin_cache_dir

    path = Path(path).resolve()
    if repository is not None and path.is_relative_to(repository) and "site-packages" not in path.parts:
        return path.relative_to(repository).as_posix()
    if path.parent == builtin_cache_dir().resolve():
        return BUILTIN_PREFIX + path.name
    return path.name


def repository_root(start: Path) -> Path | None:
    """The git work tree holding `start` (a .git directory, or a worktree's .git file), or None."""
    start = start.resolve()
    return next((d for d in (start, *start.parents) if (d / ".git").exists()), None)


def markdown_table(rows: list[dict]) -> str:
    from compress.bench.report import environment_line
    from compress.markdown import md_table

    header = ["model", "target", "batch", "prompt", "TTFT p50 ms", "decode tok/s", "step p50 ms", "peak RSS MB",
              "size MB"]
    body = []
    for r in rows:
        cells = [r["model"], r["target"], str(r["batch_size"]), str(r["prompt_len"])]
        if r["status"] != "ok":
            body.append(cells + [f"{r['status']}: {r.get('reason', '')}"] + [""] * 4)
            continue
        body.append(cells + [f"{r['ttft_p50_ms']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                             f"{r['decode_step_p50_ms']:.2f}", f"{r['peak_rss_mb']:.0f}",
                             f"{r['size_bytes'] / 2**20:.1f}"])
    first = rows[0] if rows else {}
    note = (f"Greedy, random prompt ids, {first.get('new_tokens')} decode steps after the prefill (eos ignored), "
            f"{first.get('timed_runs')} timed runs after one warm-up; TTFT = the prefill up to the first new token; "
            "decode tok/s = batch x steps / decode time (median run); peak RSS of the cell's own process.")
    return md_table(header, body) + "\n\n" + note + "\n\n" + environment_line(rows) + "\n"


def special_free_range(model_dir: Path) -> tuple[int, int]:
    """[low, high): the longest run of token ids with no special (added) token of
    tokenizer.json in it, within the vocabulary size of config.json."""
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    bounds = sorted({-1, vocab, *(t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special"))})
    low, high = max(zip(bounds, bounds[1:]), key=lambda gap: gap[1] - gap[0])
    return low + 1, high

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(cell_main(sys.argv[1:]))
