"""The measurement loop and its statistics: warm-up excluded, then at least
min_iterations runs and at least min_seconds; percentiles, not means, are reported."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """Sample standard deviation / mean: how noisy the cell was (0.05 = 5 %)."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean = sum(samples) / n
    var = sum((x - mean) ** 2 for x in samples) / (n - 1)
    return math.sqrt(var) / mean if mean else float("nan")


def latency_percentiles(samples_ms: Sequence[float], digits: int) -> dict:
    """p50/p90/p99 and mean in ms, rounded to `digits` (a stage's stage.json keeps 3, a bench row 4)."""
    return {
        "p50_ms": round(percentile(samples_ms, 50), digits),
        "p90_ms": round(percentile(samples_ms, 90), digits),
        "p99_ms": round(percentile(samples_ms, 99), digits),
        "mean_ms": round(sum(samples_ms) / len(samples_ms), digits),
    }


def summarize(samples_ms: Sequence[float], items_per_call: Sequence[int]) -> dict:
    """Latency percentiles per call and throughput over the whole timed loop."""
    total_s = sum(samples_ms) / 1000
    return {
        **latency_percentiles(samples_ms, 4),
        "cv": round(coefficient_of_variation(samples_ms), 4),
        "throughput": round(sum(items_per_call) / total_s, 3) if total_s > 0 else None,
        "iterations": len(samples_ms),
    }


def time_calls(
    call: Callable[[int], int], warmup: int, min_iterations: int, min_seconds: float, max_seconds: float,
    clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None, cycle: int = 1,
    on_start: Callable[[], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Run call(i) (which returns the number of items it processed) warmup times untimed,
    then time it until both min_iterations and min_seconds are reached, and then on to the
    end of a pass of `cycle` calls (max_seconds caps the loop once min_iterations ran).
    call(i) cycles through `cycle` distinct inputs (real eval lengths): timing whole passes
    makes a faster model time the same inputs as a slower one, not more of the longer or
    shorter ones. sync() waits for queued GPU work before each clock read, so an
    asynchronous launch is not mistaken for the work. on_start() runs once, after the
    warm-up has finished and before the first timed call (a CUDA start event is recorded
    there, so the warm-up is not in the GPU total)."""
    sync = sync or (lambda: None)
    for i in range(warmup):
        call(i)
    sync()
    if on_start is not None:
        on_start()
    samples, items = [], []
    started = clock()
    i = 0
    while True:
        t0 = clock()
        n = call(warmup + i)
        sync()
        samples.append((clock() - t0) * 1000)
        items.append(n)
        i += 1
        elapsed = clock() - started
        if i >= min_iterations and ((elapsed >= min_seconds and i % cycle == 0) or elapsed >= max_seconds):
            break
    return samples, items


def time_paired(call_model: Callable[[int], int], call_reference: Callable[[int], int], calls_per_block: int,
                min_blocks: int, min_seconds: float, max_seconds: float,
                clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Reference time / model time per block pair: a block of calls_per_block model calls, then
    the reference on the same inputs (the same call indices), repeated until min_blocks pairs
    ran and min_seconds passed (max_seconds caps it once min_blocks ran). Adjacent blocks see
    the same machine, so each ratio is free of the drift that moves separately timed cells."""
    ratios: list[float] = []
    started = clock()
    i = 0
    while True:
        spent = []
        for call in (call_model, call_reference):
            t0 = clock()
            for j in range(calls_per_block):
                call(i + j)
            spent.append(clock() - t0)
        ratios.append(spent[1] / spent[0] if spent[0] > 0 else float("nan"))
        i += calls_per_block
        elapsed = clock() - started
        if len(ratios) >= min_blocks and (elapsed >= min_seconds or elapsed >= max_seconds):
            return ratios
