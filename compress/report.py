"""The end-of-run summary: the ledger of the task's metric with size and latency per stage."""

from __future__ import annotations

import json
from pathlib import Path

from compress.manifest import Manifest


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


def _fmt_size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def summary_table(rows: list[dict], metric: str = "accuracy") -> tuple[list[str], list[list[str]]]:
    """The ledger as a table of strings: the task's metric (and its change in points against
    the first measured row), size, parameters and batch-1 latency with the speedup."""
    short = "acc" if metric == "accuracy" else metric
    header = ["stage", "artifact", metric, f"Δ {short} (pts)", "size", "params", "p50 ms (b1)", "speedup"]
    base_acc = next((r[metric] for r in rows if metric in r), None)
    base_lat = next((r["latency"]["p50_ms"] for r in rows if r.get("latency")), None)
    body = []
    for r in rows:
        if metric not in r:
            body.append([r["stage"], r.get("status", "-"), "-", "-", "-", "-", "-", "-"])
            continue
        lat = r.get("latency", {}).get("p50_ms")
        body.append([
            r["stage"],
            r["artifact"],
            f"{r[metric]:.4f}",
            f"{(r[metric] - base_acc) * 100:+.2f}",
            _fmt_size(r.get("size_bytes")),
            f"{r['parameters'] / 1e6:.1f}M" if r.get("parameters") else "-",
            f"{lat:.2f}" if lat is not None else "-",
            f"{base_lat / lat:.2f}x" if lat and base_lat else "-",
        ])
    return header, body


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: header, separator, one line per row (no trailing newline)."""
    return "\n".join([f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|",
                      *(f"| {' | '.join(row)} |" for row in rows)])


def markdown_summary(run_dir: Path) -> str:
    manifest, metric = _metric_of(run_dir)
    rows = ledger_rows(manifest, run_dir)
    header, body = summary_table(rows, metric)
    threads = next((r["latency"]["threads"] for r in rows if r.get("latency")), None)
    note = f"\n\n{metric.capitalize()} on the eval split; latency: batch 1, real eval lengths, {threads} threads, speedup vs the first row."
    skipped = "".join(f"\n- {r['stage']} skipped: {r['error']}" for r in rows if r.get("status") == "skipped")
    return md_table(header, body) + (note if threads else "") + ("\n" + skipped if skipped else "") + "\n"


def print_summary(run_dir: Path, console) -> None:
    from rich.table import Table

    manifest, metric = _metric_of(run_dir)
    rows = ledger_rows(manifest, run_dir)
    header, body = summary_table(rows, metric)
    table = Table(title=f"{run_dir.name}: {metric} ledger", title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
    for r in rows:
        if r.get("status") == "skipped":
            console.print(f"{r['stage']} skipped: {r['error']}", style="yellow", highlight=False)
