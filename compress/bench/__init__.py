"""Benchmarks: compressed artifacts measured side by side, one subprocess per cell.

settings (what to measure) → spec (which models, from YAML) → plan (the cells) →
runner (a subprocess per cell, `cell`) → report (JSONL → CSV, Markdown, Pareto plot).
Nothing heavy is imported here: `compress validate` reads `settings` without torch."""
