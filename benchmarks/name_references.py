"""Name the two speedup references in benchmark rows written before rows carried them
(`baseline_reference`, `ort_fp32_reference`), then re-render the tables with
`compress table`. A one-off for committed results; new rows name theirs when measured.

    python benchmarks/name_references.py RESULTS.jsonl [--ort-reference NAME | --ort-reference none]

Without --ort-reference a row keeps the reference its run group's roles gave it (the first
export_onnx of the run). That is right only where that export is the baseline model's own
(finetune → export_onnx); where it is not (distill-prune: the pruned student's export), name
the baseline's own export, or `none` when the run has no export of it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.bench.plan import ORT_FP32  # noqa: E402
from compress.bench.report import read_rows, with_speedups  # noqa: E402


def name_references(rows: list[dict], ort_reference: str | None, override: bool) -> list[dict]:
    named = with_speedups(rows)  # the legacy role lookup, reported as names
    out = []
    for row, resolved in zip(rows, named):
        row = dict(row)
        row.setdefault("baseline_reference", resolved.get("baseline_reference"))
        if override:
            row["ort_fp32_reference"] = ort_reference
            row["role"] = ORT_FP32 if row["model"] == ort_reference else (
                None if row.get("role") == ORT_FP32 else row.get("role"))
        else:
            row.setdefault("ort_fp32_reference", resolved.get("ort_fp32_reference"))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--ort-reference", help="the model name every row's ORT fp32 speedup is against, or none")
    args = parser.parse_args()
    rows = read_rows(args.results)
    ort = None if args.ort_reference in (None, "none") else args.ort_reference
    if ort is not None and not any(r["model"] == ort for r in rows):
        raise SystemExit(f"{args.results}: no row names model {ort!r}")
    rows = name_references(rows, ort, override=args.ort_reference is not None)
    args.results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
