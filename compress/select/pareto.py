"""The choice as a pure function of the candidates: the Pareto front of metric against
latency, and the fastest candidate whose metric drop from the reference is within budget;
and the table that shows it (model card, summary.md)."""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import SelectionError
from compress.markdown import md_table


@dataclass(frozen=True)
class Candidate:
    stage: str  # the stage directory, NN-kind
    artifact: str  # its kind (onnx, trt, torch)
    metric: float  # the run's metric on the eval split
    p50_ms: float  # on the select block's target and shape


def pareto_front(candidates: list[Candidate]) -> set[str]:
    """The stages no other candidate beats: none at least as good on both metric and latency
    and better on one."""
    def beats(a: Candidate, b: Candidate) -> bool:
        return a.metric >= b.metric and a.p50_ms <= b.p50_ms and (a.metric > b.metric or a.p50_ms < b.p50_ms)

    return {c.stage for c in candidates if not any(beats(o, c) for o in candidates)}


def drop_of(candidate: Candidate, reference: float) -> float:
    # rounded: metrics are stored to 4 digits, so 0.8095 - 0.7995 must be exactly a 0.01 drop
    return round(reference - candidate.metric, 6)


def choose(candidates: list[Candidate], reference: float, max_drop: float, reference_name: str,
           metric: str) -> dict:
    """The fastest candidate within max_drop of the reference's metric (ties: the better metric),
    with every candidate's drop in points, budget and front membership. SelectionError when
    there is no candidate or none within budget (naming the best one and its drop)."""
    if not candidates:
        raise SelectionError("no candidate: no completed stage of the run has both the metric and a latency")
    within = [c for c in candidates if drop_of(c, reference) <= max_drop]
    if not within:
        best = min(candidates, key=lambda c: drop_of(c, reference))
        raise SelectionError(
            f"no candidate is within max_metric_drop {max_drop:g} ({max_drop * 100:.2f} points) of "
            f"{reference_name}'s {metric} {reference:.4f}: the best, {best.stage}, drops "
            f"{drop_of(best, reference) * 100:.2f} points ({metric} {best.metric:.4f})")
    chosen = min(within, key=lambda c: (c.p50_ms, -c.metric))
    front = pareto_front(candidates)
    return {"chosen": chosen.stage, "candidates": [
        {"stage": c.stage, "artifact": c.artifact, metric: c.metric,
         "drop_points": round(drop_of(c, reference) * 100, 4), "p50_ms": c.p50_ms,
         "within_budget": c in within, "on_front": c.stage in front, "chosen": c is chosen}
        for c in candidates]}


def status_of(row: dict) -> str:
    tags = (["chosen"] if row["chosen"] else []) + (["on front"] if row["on_front"] else []) \
        + ([] if row["within_budget"] else ["over budget"])
    return ", ".join(tags) or "dominated"


def selection_markdown(record: dict) -> str:
    """What select chose and the table that led to it: every candidate marked chosen, on the
    Pareto front, over budget (or dominated), and the stages that were not candidates."""
    metric, ref = record["metric"], record["reference"]
    header = ["stage", "artifact", metric, f"drop vs {ref['name']} (pts)",
              f"p50 ms ({record['target']}, {record['shape']}, {record['threads']} threads)", "status"]
    body = [[c["stage"], c["artifact"], f"{c[metric]:.4f}", f"{c['drop_points']:.2f}", f"{c['p50_ms']:.2f}",
             status_of(c)] for c in record["candidates"]]
    lines = [f"`select:` chose **{record['chosen']}**: the fastest on {record['target']} ({record['shape']}, "
             f"{record['threads']} threads) within {record['max_metric_drop'] * 100:.2f} points of "
             f"{ref['name']}'s {metric} {ref['value']:.4f}. Latency: {record['latency_source']}.",
             "", md_table(header, body)]
    if record.get("not_candidates"):
        lines += ["", "Not candidates: " + "; ".join(f"{n['stage']} ({n['reason']})"
                                                  for n in record["not_candidates"]) + "."]
    return "\n".join(lines)
