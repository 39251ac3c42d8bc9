"""The end-of-run summary: the ledger of the task's metric with size and latency per stage."""

from __future__ import annotations

import json
from pathlib import Path

from compress.latency_vs_input import (
    SLOWER_MARGIN,
    describe_slower,
    slower_rows,
    vs_input_cell,
)
from compress.manifest import Manifest
from compress.markdown import md_table
from compress.select.pareto import selection_markdown


def ledger_rows(manifest: Manifest, run_dir: Path) -> list[dict]:
    """The input's measurement, then one row per stage: its stage.json, or its status."""
    rows = []
    if manifest.input:
        rows.append({"stage": "input", **manifest.input})
    for entry in manifest.stages:
        if not entry.done:
            rows.append({"stage": entry.name, "status": entry.status, "error": entry.error or entry.reason})
            continue
        record = json.loads((run_dir / entry.path / "stage.json").read_text())
        rows.append({"stage": entry.name, **record})
    return rows


def _metric_of(run_dir: Path) -> tuple[Manifest, str]:
    from compress.tasks import get_task

    manifest = Manifest.read(run_dir)
    return manifest, manifest.metric or get_task(manifest.task).primary_metric


def _relative(manifest: Manifest, metric: str) -> bool:
    """A lower-is-better metric (perplexity) changes by percent, not by points."""
    from compress.tasks import get_task, is_lower_better

    return is_lower_better(get_task(manifest.task), metric)


def _fmt_size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def summary_table(rows: list[dict], metric: str = "accuracy", relative: bool = False
                  ) -> tuple[list[str], list[list[str]]]:
    """The ledger as a table of strings: the task's metric (and its change in points against
    the first measured row), size, parameters and batch-1 latency with the speedup; and, when
    the stages recorded it (runs before it did not), the latency change against each stage's
    own input, marked SLOWER beyond the margin (compress.latency_vs_input). relative: the change
    in percent of the first row's value instead (perplexity is no share of 100 points)."""
    short = "acc" if metric == "accuracy" else metric
    header = ["stage", "artifact", metric, f"Δ {short} ({'%' if relative else 'pts'})", "size", "params",
              "p50 ms (b1)", "speedup"]
    vs_input = any(r.get("latency_vs_input") for r in rows)
    labels = any(r.get("labels_vs_input") for r in rows)
    base_acc = next((r[metric] for r in rows if metric in r), None)
    base_lat = next((r["latency"]["p50_ms"] for r in rows if r.get("latency")), None)
    body = []
    for r in rows:
        if metric not in r:
            body.append([r["stage"], r.get("status", "-"), *["-"] * (len(header) - 2 + vs_input + labels)])
            continue
        lat = r.get("latency", {}).get("p50_ms")
        body.append([
            r["stage"],
            r["artifact"],
            f"{r[metric]:.4f}",
            f"{((r[metric] / base_acc - 1) if relative else (r[metric] - base_acc)) * 100:+.2f}",
            _fmt_size(r.get("size_bytes")),
            f"{r['parameters'] / 1e6:.1f}M" if r.get("parameters") else "-",
            f"{lat:.2f}" if lat is not None else "-",
            f"{base_lat / lat:.2f}x" if lat and base_lat else "-",
            *([vs_input_cell(r)] if vs_input else []),
            *([labels_cell(r.get("labels_vs_input"))] if labels else []),
        ])
    return header + ["p50 vs input"] * vs_input + ["labels vs input"] * labels, body


def labels_cell(compared: dict | None) -> str:
    """A stage's labels against its input's: agreement, and McNemar's p for 'as accurate'."""
    return "-" if not compared else f"{compared['agreement']:.1%}, p {compared['mcnemar_p']:.2f}"


def ledger_warnings(rows: list[dict]) -> list[str]:
    """One line per skipped stage and per stage slower than its input."""
    return ([f"{r['stage']} skipped: {r['error']}" for r in rows if r.get("status") == "skipped"]
            + [describe_slower(r["stage"], r["artifact"], r["latency_vs_input"]) for r in slower_rows(rows)])


def markdown_summary(run_dir: Path) -> str:
    manifest, metric = _metric_of(run_dir)
    rows = ledger_rows(manifest, run_dir)
    header, body = summary_table(rows, metric, _relative(manifest, metric))
    threads = next((r["latency"]["threads"] for r in rows if r.get("latency")), None)
    note = f"\n\n{metric.capitalize()} on the eval split; latency: batch 1, real eval lengths, {threads} threads, speedup vs the first row."
    if "p50 vs input" in header:
        note += f" p50 vs input: against the artifact the stage was built from; SLOWER: by more than {SLOWER_MARGIN:.0%}."
    if "labels vs input" in header:
        note += (" labels vs input: the eval examples given the same label as the stage's input, and McNemar's exact"
                 " p for 'as accurate as the input' (small: the accuracy change is more than chance).")
    warnings = "".join(f"\n- {line}" for line in ledger_warnings(rows))
    selection = f"\n\n## Selection\n\n{selection_markdown(manifest.selection)}" if manifest.selection else ""
    return md_table(header, body) + (note if threads else "") + ("\n" + warnings if warnings else "") + selection + "\n"


def print_summary(run_dir: Path, console) -> None:
    from rich import box
    from rich.table import Table

    manifest, metric = _metric_of(run_dir)
    rows = ledger_rows(manifest, run_dir)
    header, body = summary_table(rows, metric, _relative(manifest, metric))
    table = Table(title=f"{run_dir.name}: {metric} ledger", title_justify="left", box=box.SIMPLE_HEAD)
    for i, h in enumerate(header):  # stage names never fold; on a narrow terminal the numbers' columns do
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0,
                         min_width=7 if h == "labels vs input" else None)  # '100.0%,' never cut
    for row in body:
        table.add_row(*row)
    console.print(table)
    for line in ledger_warnings(rows):
        console.print(line, style="yellow", highlight=False)
    if manifest.selection:
        console.print(selection_markdown(manifest.selection), highlight=False, markup=False)
