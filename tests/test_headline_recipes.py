"""The headline recipes in tiny form: the same stages and benchmark block on a tiny MPNet
classifier (the real teacher's architecture), tiny data and a few steps per training stage."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import manifest, run_shipped_recipe, stage_json


def bench_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "bench" / "results.jsonl").read_text().splitlines()]


def test_headline_ptq_in_tiny_form(tmp_path, tiny_mpnet_dir):
    run_dir = run_shipped_recipe("headline-ptq.yaml", tmp_path, tiny_mpnet_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 3
    assert stage_json(run_dir, "03-ptq")["int8_coverage"]
    rows = [r for r in bench_rows(run_dir) if r["status"] == "ok"]
    baseline = {(r["target"], r["shape"]) for r in rows if r["role"] == "baseline"}
    assert baseline == {("torch-cpu", "b1xreal"), ("torch-cpu", "b4xreal")}  # the teacher, in the same run


def test_headline_full_chain_in_tiny_form(tmp_path, tiny_mpnet_dir):
    run_dir = run_shipped_recipe("headline-full.yaml", tmp_path, tiny_mpnet_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 4
    assert stage_json(run_dir, "01-distill")["student"]["structure"]["layers"] == 2  # every: 2 on 4 layers
    pruned = stage_json(run_dir, "02-prune")
    assert sum(pruned["structure_after"]["ffn_per_layer"]) == 64  # half of 2 x 64, ranked globally
    assert pruned["parameters"] < stage_json(run_dir, "01-distill")["parameters"]
    rows = [r for r in bench_rows(run_dir) if r["status"] == "ok"]
    assert {r["model"].split("/")[-1] for r in rows} >= {tiny_mpnet_dir.name, "04-optimize_onnx"}
