"""One benchmark cell, run in its own process (python -m compress.bench.cell JOB OUT):
open the artifact on the target with the thread count set, build the inputs, warm up,
time, then measure accuracy through the same session. Writes a JSON result to OUT.

A fresh process per cell: thread pools, allocator state and caches of one runtime never
leak into another's numbers."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def fixed_batches(session, tokenizer, batch_size: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Full-length synthetic inputs ([CLS] random tokens [SEP], no padding): the shape,
    not the content, sets the cost of a dense encoder."""
    rng = np.random.default_rng(seed)
    low = max(tokenizer.all_special_ids or [0]) + 1
    ids = rng.integers(low, len(tokenizer), size=(batch_size, seq_len), dtype=np.int64)
    if seq_len >= 2 and tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return [{k: full[k] for k in session.input_names}]


def real_batches(session, encoded: list[dict], batch_size: int) -> tuple[list[dict], list[int]]:
    """Consecutive eval examples in their original order, each batch padded to its longest,
    and the examples in each. An example is the task's unit of work: a text, a pair, or a
    question with every window of its context (features sharing an `example`), so batch
    size 1 times one question however many windows it takes."""
    from compress.data import pad_batch

    groups: list[list[dict]] = []
    for feature in encoded:
        if groups and "example" in feature and groups[-1][0].get("example") == feature["example"]:
            groups[-1].append(feature)
        else:
            groups.append([feature])
    spans = [groups[i : i + batch_size] for i in range(0, len(groups) - batch_size + 1, batch_size)] or [groups]
    return ([pad_batch([f for g in span for f in g], session.input_names, session.pad_id) for span in spans],
            [len(span) for span in spans])


def load_eval(job: dict, artifact, split=None) -> tuple[list[dict], object] | None:
    """The eval split encoded with the artifact's tokenizer, and the split itself (`split`:
    one already loaded for this job, so a second artifact only encodes it)."""
    if not job.get("data"):
        return None
    from compress.data import DataSpec, load_splits
    from compress.models import load_tokenizer
    from compress.tasks import get_task

    spec, task = DataSpec.model_validate(job["data"]), get_task(job["model"].get("task", "text-classification"))
    if split is None:
        split = load_splits(spec, task.name).eval
        if job.get("max_eval_samples"):
            split = split.subset(list(range(min(job["max_eval_samples"], len(split)))))
    return task.encode(load_tokenizer(artifact.path), split, spec.max_length), split


def cell_batches(job: dict, session, artifact, evalset) -> tuple[list[dict], list[int]]:
    """The cell's inputs (real eval lengths, or one synthetic batch of the fixed shape) and the
    examples in each."""
    from compress.models import load_tokenizer

    if job["seq_len"] is None:
        return real_batches(session, evalset[0], job["batch_size"])
    batches = fixed_batches(session, load_tokenizer(artifact.path), job["batch_size"], job["seq_len"])
    return batches, [len(b["input_ids"]) for b in batches]


PAIRED_BLOCK_SECONDS = 0.1  # long enough to re-warm caches after the other model's block, short next to the drift


def paired_speedup(job: dict, target, session, batches: list[dict], evalset, model_p50_ms: float) -> dict:
    """Time the cell's model against its ORT fp32 reference in alternating blocks (timing.time_paired)
    on the same inputs; the median block ratio and how many blocks it is the median of."""
    import statistics

    from compress.bench.plan import reopen_artifact
    from compress.bench.timing import time_paired
    from compress.sessions import open_session

    reference = reopen_artifact(job["paired_with"])
    ref_session = open_session(reference, job["threads"], target)
    ref_eval = load_eval(job, reference, split=evalset[1]) if job["seq_len"] is None else None
    ref_batches, _ = cell_batches(job, ref_session, reference, ref_eval)
    if len(ref_batches) != len(batches):
        raise RuntimeError(f"paired: {job['paired_with']['name']} makes {len(ref_batches)} batches of the eval "
                           f"set, {job['model']['name']} {len(batches)}: not the same inputs")
    for i in range(job["warmup"]):
        ref_session.run(ref_batches[i % len(ref_batches)])
    per_block = max(1, round(PAIRED_BLOCK_SECONDS * 1000 / model_p50_ms))
    ratios = time_paired(lambda i: session.run(batches[i % len(batches)]),
                         lambda i: ref_session.run(ref_batches[i % len(ref_batches)]),
                         per_block, job["min_iterations"], job["min_seconds"], job["max_seconds"])
    return {"paired_speedup": round(statistics.median(ratios), 4), "paired_blocks": len(ratios),
            "paired_calls_per_block": per_block}


def measure_cell(job: dict) -> dict:
    from compress.bench.plan import reopen_artifact
    from compress.bench.targets import TARGETS
    from compress.bench.timing import summarize, time_calls
    from compress.evaluate import evaluate_task
    from compress.sessions import open_session

    target = TARGETS[job["target"]]
    artifact = reopen_artifact(job["model"])
    threads, seq_len = job["threads"], job["seq_len"]
    started = time.perf_counter()
    session = open_session(artifact, threads, target)
    load_s = time.perf_counter() - started
    evalset = load_eval(job, artifact) if (job["accuracy"] or seq_len is None) else None
    batches, examples_per_batch = cell_batches(job, session, artifact, evalset)

    sync, on_start, gpu = None, None, {}
    if target.device == "cuda":  # gated: only on a GPU target, where torch sees CUDA
        import torch

        sync = torch.cuda.synchronize
        start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        on_start = start_evt.record  # after the warm-up: the event total covers the timed calls only

    def call(i: int) -> int:  # returns the examples done: throughput counts texts, pairs, questions
        session.run(batches[i % len(batches)])
        return examples_per_batch[i % len(batches)]

    # warm-up calls take the first batches: the timed loop starts at batch `warmup`, so a pass
    # of len(batches) calls from there still times every batch exactly once
    samples, items = time_calls(call, job["warmup"], job["min_iterations"], job["min_seconds"], job["max_seconds"],
                                sync=sync, cycle=len(batches), on_start=on_start)
    if target.device == "cuda":
        end_evt.record()
        torch.cuda.synchronize()
        gpu = {"cuda_event_total_ms": round(start_evt.elapsed_time(end_evt), 3),
               "gpu_name": torch.cuda.get_device_name(0),
               "gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; timing phase only
    tokens = [int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].size for b in batches]
    result = {
        **summarize(samples, items),
        **gpu,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "size_bytes": artifact.size_bytes(),
        "session_load_s": round(load_s, 3),
        "warmup": job["warmup"],
        "distinct_batches": len(batches),
        "passes": round(len(samples) / len(batches), 3),  # whole passes unless max_seconds cut the last
        "mean_real_tokens_per_item": round(sum(tokens) / sum(len(b["input_ids"]) for b in batches), 2),
        "runtime_threads": _runtime_threads(target),
    }
    if job.get("paired_with"):  # after the cell's own timing, which it leaves as it was
        result.update(paired_speedup(job, target, session, batches, evalset, result["p50_ms"]))
    if job["accuracy"] and evalset is not None:
        from compress.tasks import get_task

        encoded, dataset = evalset
        task = get_task(job["model"].get("task", "text-classification"))
        references = task.references(dataset)
        result.update(evaluate_task(session, encoded, references, task, job["eval_batch_size"], keep_predictions=True))
        if "predictions" in result:  # a row compares with another only on the same examples (compress.bench.compare)
            result["references"] = list(references)
        result["metric"] = job["model"].get("metric") or task.primary_metric  # the one the tables show
    if evalset is not None:  # a long QA context is several windows, all in its example's call
        result["features_per_example"] = round(len(evalset[0]) / max(1, len(evalset[1])), 4)
    return result


def _runtime_threads(target) -> dict:
    out = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if target.name.startswith("torch"):
        import torch

        out["torch"] = torch.get_num_threads()
    return out


def main(argv: list[str]) -> int:
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    result = measure_cell(job)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    from compress import progress

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    progress.configure(enabled=False)  # the parent reads this process's stderr for a failure's reason
    sys.exit(main(sys.argv[1:]))
