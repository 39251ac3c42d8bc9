"""Percentiles, coefficient of variation and the timing loop, on synthetic samples."""

from __future__ import annotations

import numpy as np
import pytest

from compress.bench.timing import (
    coefficient_of_variation,
    percentile,
    summarize,
    time_calls,
    time_paired,
)


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    samples = list(np.random.default_rng(3).lognormal(1.0, 0.5, size=257))
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_interpolates_and_ignores_order():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_coefficient_of_variation():
    assert coefficient_of_variation([5.0, 5.0, 5.0]) == 0.0
    samples = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sample std sqrt(5/3)
    assert coefficient_of_variation(samples) == pytest.approx(np.std(samples, ddof=1) / 2.5)
    assert coefficient_of_variation([7.0]) == 0.0


def test_summarize_throughput_counts_items_not_calls():
    s = summarize([10.0, 10.0, 20.0, 20.0], [8, 8, 8, 8])  # 32 items in 60 ms
    assert s["throughput"] == pytest.approx(32 / 0.060, rel=1e-3)
    assert s["p50_ms"] == 15.0 and s["iterations"] == 4


class FakeClock:
    """Each call to the timed function advances time by `step` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now


def test_time_calls_excludes_warmup_and_honours_minimums():
    clock = FakeClock(0.01)
    seen = []

    def call(i):
        seen.append(i)
        clock.now += 0.5 if i < 3 else 0.01  # the warm-up calls are slow
        return 2

    samples, items = time_calls(call, warmup=3, min_iterations=5, min_seconds=0.2, max_seconds=10, clock=clock)
    assert seen[:3] == [0, 1, 2]
    assert len(samples) == 20  # 0.2 s at 10 ms each: min_seconds dominates min_iterations
    assert max(samples) == pytest.approx(10.0)  # no warm-up sample leaked in
    assert sum(items) == 40


def test_time_calls_ends_on_a_whole_pass_over_distinct_inputs():
    """Real eval lengths: 7 distinct batches, the faster model must not time a different mix."""
    for step in (0.01, 0.003):  # a slower and a faster model
        clock = FakeClock(step)

        def call(i, clock=clock, step=step):
            clock.now += step
            return 1

        samples, _ = time_calls(call, warmup=2, min_iterations=5, min_seconds=0.1, max_seconds=10, clock=clock,
                                cycle=7)
        assert len(samples) % 7 == 0 and len(samples) * step >= 0.1 - 1e-9
    clock = FakeClock(1.0)

    def slow(i):
        clock.now += 1.0
        return 1

    samples, _ = time_calls(slow, warmup=0, min_iterations=2, min_seconds=0, max_seconds=3, clock=clock, cycle=100)
    assert len(samples) == 3  # max_seconds still caps the loop


def test_time_calls_runs_min_iterations_even_past_max_seconds():
    clock = FakeClock(1.0)

    def call(i):
        clock.now += 1.0
        return 1

    samples, _ = time_calls(call, warmup=0, min_iterations=4, min_seconds=100, max_seconds=2, clock=clock)
    assert len(samples) == 4


def test_time_calls_syncs_before_reading_the_clock():
    clock, pending = FakeClock(0), []

    def call(i):  # an "asynchronous launch": the work happens at sync time
        pending.append(0.003)
        return 1

    def sync():
        while pending:
            clock.now += pending.pop()

    samples, _ = time_calls(call, warmup=1, min_iterations=3, min_seconds=0, max_seconds=1, clock=clock, sync=sync)
    assert samples == pytest.approx([3.0, 3.0, 3.0])


def test_real_batches_keep_a_questions_windows_in_one_call():
    """QA: batch size 1 is one question with every window of its context; throughput counts questions."""
    from types import SimpleNamespace

    from compress.bench.cell import real_batches

    session = SimpleNamespace(input_names=["input_ids", "attention_mask"], pad_id=0)
    features = [{"input_ids": [1] * n, "attention_mask": [1] * n, "example": e}
                for e, n in [(0, 5), (0, 3), (1, 4), (2, 6), (2, 6), (2, 2)]]
    batches, examples = real_batches(session, features, 1)
    assert [b["input_ids"].shape for b in batches] == [(2, 5), (1, 4), (3, 6)] and examples == [1, 1, 1]
    batches, examples = real_batches(session, features, 2)
    assert [b["input_ids"].shape[0] for b in batches] == [3] and examples == [2]  # the third question is left over
    plain = [{"input_ids": [1] * 3, "attention_mask": [1] * 3} for _ in range(4)]  # one feature per example
    assert real_batches(session, plain, 2)[1] == [2, 2]


def test_the_timing_start_hook_runs_after_the_warm_up():
    """A CUDA cell records its start event in on_start: after every warm-up call and the sync
    that drains them, before the first timed call (it was recorded before the warm-up)."""
    events = []

    def call(i):
        events.append(("call", i))
        return 1

    samples, _ = time_calls(call, warmup=3, min_iterations=2, min_seconds=0, max_seconds=10,
                            sync=lambda: events.append(("sync",)), on_start=lambda: events.append(("start",)))
    start = events.index(("start",))
    assert events[:start] == [("call", 0), ("call", 1), ("call", 2), ("sync",)]
    assert events[start + 1] == ("call", 3) and len(samples) == 2


def test_the_cuda_cell_passes_its_start_event_as_the_hook():
    import inspect

    from compress.bench import cell

    source = inspect.getsource(cell.measure_cell)
    assert "on_start = start_evt.record" in source and "on_start=on_start" in source
    assert "start_evt.record()" not in source  # never recorded before the warm-up again


def test_time_paired_ratios_adjacent_blocks_on_the_same_inputs():
    """The machine slows down 3x halfway: separately timed cells would differ 3x, each block
    ratio stays the reference/model cost ratio (2x) because both blocks of a pair see one speed."""
    clock = FakeClock(0.0)
    seen = {"model": [], "reference": []}

    def timed(name, cost):
        def call(i):
            seen[name].append(i)
            clock.now += cost * (3 if clock.now > 1.0 else 1)
            return 1
        return call

    ratios = time_paired(timed("model", 0.01), timed("reference", 0.02), calls_per_block=4,
                         min_blocks=5, min_seconds=2.0, max_seconds=60.0, clock=clock)
    assert len(ratios) >= 5 and clock.now >= 2.0
    off = [r for r in ratios if r != pytest.approx(2.0)]
    assert len(off) <= 1  # only the pair that straddles the slow-down
    assert np.median(ratios) == pytest.approx(2.0)
    assert seen["model"] == seen["reference"]  # the same inputs, in the same order
    assert seen["model"][:8] == list(range(8))


def test_time_paired_stops_at_max_seconds_once_min_blocks_ran():
    clock = FakeClock(0.0)

    def call(i):
        clock.now += 1.0
        return 1

    ratios = time_paired(call, call, calls_per_block=1, min_blocks=2, min_seconds=100.0, max_seconds=5.0, clock=clock)
    assert len(ratios) == 3 and ratios == [1.0, 1.0, 1.0]  # 6 s after the 3rd pair: past max_seconds
