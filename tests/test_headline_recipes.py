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


def test_headline_pruned_chain_in_tiny_form(tmp_path, tiny_mpnet_dir):
    """The teacher pruned in place: layers, MPNet heads and FFN neurons go, then export, fusion
    (one ONNX Attention per remaining layer) and dynamic INT8."""
    run_dir = run_shipped_recipe("headline-pruned.yaml", tmp_path, tiny_mpnet_dir)
    assert [s["status"] for s in manifest(run_dir)["stages"]] == ["completed"] * 4
    after = stage_json(run_dir, "01-prune")["structure_after"]
    assert after["layers"] == 2 and sum(after["heads_per_layer"]) == 2  # 4 layers x 2 heads: half of the 4 left
    assert sum(after["ffn_per_layer"]) == 32  # a quarter of 2 x 64
    assert stage_json(run_dir, "03-optimize_onnx")["fused_ops"]["Attention"] == 2
    assert stage_json(run_dir, "04-ptq")["int8_coverage"]["int8_matmul_nodes"] > 0
