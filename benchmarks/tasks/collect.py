"""Copy what a finished run measured (not its model files) into benchmarks/results/tasks/<run>/:
manifest.json, data_split.json, every stage's stage.json (paths of this checkout written
relative to the repository root; each at the run's own paths, so
`compress.report.markdown_summary` reads the copy as it reads the run), summary.md and
the run's benchmark (bench/results.jsonl, .md, .csv, pareto.png).

    python benchmarks/tasks/collect.py RUN_DIR [--out benchmarks/results/tasks]

tests/test_task_results.py re-renders summary.md and bench/results.md from these files."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compress.manifest import Manifest  # noqa: E402
from compress.report import markdown_summary  # noqa: E402


def copy_portable(src: Path, dst: Path) -> None:
    """Copy a JSON record with this checkout's absolute paths written relative to the
    repository root (recipe, model and data files), so the record holds no machine's paths."""
    text = src.read_text(encoding="utf-8")
    dst.write_text(text.replace(json.dumps(str(ROOT) + "/")[1:-1], ""), encoding="utf-8")


def collect(run_dir: Path, out_root: Path) -> Path:
    manifest = Manifest.read(run_dir)
    if manifest.status != "completed":
        raise SystemExit(f"{run_dir}: the run is {manifest.status}, not completed")
    out = out_root / run_dir.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("manifest.json", "data_split.json"):
        copy_portable(run_dir / name, out / name)
    for entry in manifest.done_stages():
        (out / entry.path).mkdir(parents=True, exist_ok=True)
        copy_portable(run_dir / entry.path / "stage.json", out / entry.path / "stage.json")
    (out / "summary.md").write_text(markdown_summary(run_dir), encoding="utf-8")
    if (run_dir / "bench").is_dir():
        shutil.copytree(run_dir / "bench", out / "bench", ignore=shutil.ignore_patterns("*.tmp", "cells"))
    return out


def readme_row(results: Path) -> str:
    """One Markdown row per task run for the README: the run's metric for the fp32 ONNX export
    and the INT8 model in the same run, and their batch-1 ONNX Runtime latency from the run's
    benchmark (real eval lengths)."""
    from compress.bench.report import read_rows, with_speedups

    manifest = Manifest.read(results)
    metric = manifest.metric
    stages = {e.kind: json.loads((results / e.path / "stage.json").read_text()) for e in manifest.done_stages()}
    fp32, int8 = stages["export_onnx"], stages["ptq"]
    rows = with_speedups(read_rows(results / "bench" / "results.jsonl"))
    at_b1 = {r["model"].split("/")[-1]: r for r in rows if r["status"] == "ok" and r["target"] == "ort-cpu"
             and r["batch_size"] == 1 and r["seq_len"] == "real"}
    fp32_b1, int8_b1 = at_b1[_stage_path(manifest, "export_onnx")], at_b1[_stage_path(manifest, "ptq")]
    return (f"| {manifest.name} | {manifest.task} | {metric} | {fp32[metric]:.4f} | {int8[metric]:.4f} | "
            f"{(int8[metric] - fp32[metric]) * 100:+.2f} | {fp32_b1['p50_ms']:.2f} | {int8_b1['p50_ms']:.2f} | "
            f"{fp32_b1['p50_ms'] / int8_b1['p50_ms']:.2f}x | {fp32['size_bytes'] / 1e6:.1f} → "
            f"{int8['size_bytes'] / 1e6:.1f} MB |")


def _stage_path(manifest: Manifest, kind: str) -> str:
    return next(e.path for e in manifest.done_stages() if e.kind == kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tasks")
    a = parser.parse_args()
    print(collect(a.run_dir.resolve(), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
