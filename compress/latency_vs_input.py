"""Is a stage's artifact slower than the artifact it was built from? The pipeline compares
the two batch-1 p50 latencies when a stage finishes and records the answer in stage.json
(`latency_vs_input`); the ledger marks the slower rows. Pure functions on records."""

from __future__ import annotations

# Why 5 %: both p50s are medians over the same eval examples in the same order (one stage's
# measurement and its input's), so example lengths do not move them; what does is machine
# load drifting between the two measurements, which one measurement cannot estimate (its
# p90-p50 width is mostly those example lengths, not noise). The S8S8 slowdown that motivated
# this check was 12 % (23.3 vs 20.8 ms), so a wider margin would have hidden it; a flag on a
# busy machine may be drift, which is why the warning asks for `compress bench` with repeats.
SLOWER_MARGIN = 0.05


def compare_latency(latency: dict | None, input_latency: dict | None, input_name: str,
                    same_model: bool = False) -> dict | None:
    """The record of one stage against its input: both p50s, the relative change, and
    `slower` when the stage is slower by more than SLOWER_MARGIN. None when either was not
    timed. same_model: the stage ships its input's model unchanged (package), so a change is
    measurement drift and never a slower artifact."""
    p50 = (latency or {}).get("p50_ms")
    input_p50 = (input_latency or {}).get("p50_ms")
    if not p50 or not input_p50:
        return None
    change = p50 / input_p50 - 1
    return {"input": input_name, "input_p50_ms": input_p50, "p50_ms": p50, "change": round(change, 4),
            "margin": SLOWER_MARGIN, "same_model": same_model,
            "slower": not same_model and change > SLOWER_MARGIN}


def describe_slower(stage: str, artifact: str, comparison: dict) -> str:
    """One line for the log and the ledger's notes."""
    # the first stage's input is the recipe's model, which the run records under the name "input"
    source = "the recipe's input model" if comparison["input"] == "input" else f"its input {comparison['input']}"
    return (f"{stage}: its {artifact} artifact is slower than {source} at batch-1 p50 "
            f"({comparison['p50_ms']:.2f} vs {comparison['input_p50_ms']:.2f} ms, {comparison['change']:+.0%}, "
            f"margin {comparison['margin']:.0%}); confirm with `compress bench` (repeats: 3) before shipping it")


def vs_input_cell(row: dict) -> str:
    """The ledger's 'vs input' cell: the p50 change against the stage's input, marked SLOWER
    beyond the margin; 'same model' for a stage that ships its input unchanged."""
    comparison = row.get("latency_vs_input")
    if not comparison:
        return "-"
    if comparison.get("same_model"):
        return "same model"
    return f"{comparison['change']:+.0%}" + (" SLOWER" if comparison["slower"] else "")


def slower_rows(rows: list[dict]) -> list[dict]:
    """The ledger rows whose stage recorded a slower artifact than its input."""
    return [r for r in rows if (r.get("latency_vs_input") or {}).get("slower")]
