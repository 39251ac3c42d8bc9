"""Markdown tables, shared by the ledger, the benchmark report and the select block's table."""

from __future__ import annotations


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: header, separator, one line per row (no trailing newline)."""
    return "\n".join([f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|",
                      *(f"| {' | '.join(row)} |" for row in rows)])
