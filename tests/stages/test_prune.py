"""The prune stage on the tiny 2-layer classifier: structured (fractions, budget, per layer)
with recovery and ONNX export after it, unstructured gradual pruning, bad configs."""

from __future__ import annotations

import json
import logging
import re

import pytest

from compress.models import (
    FFN_WIDTHS_KEY,
    count_parameters,
    load_model,
    model_structure,
)
from tests.conftest import tiny_recipe_text
from tests.helpers import recipe_error, run_tiny, stage_json

TRAIN = """
    max_steps: 6
    batch_size: 8
    learning_rate: 1.0e-3
    warmup_ratio: 0.0
"""


def test_structured_prune_with_recovery_then_onnx_export(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: prune\n    heads: 0.5\n    ffn: 0.3\n    importance_batches: 4\n" + TRAIN + \
             "\n  - kind: export_onnx\n  - kind: optimize_onnx\n"
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    record = stage_json(run_dir, "01-prune")
    assert record["structure_before"] == {"layers": 2, "hidden_size": 32, "heads_per_layer": [2, 2],
                                          "ffn_per_layer": [64, 64]}
    after = record["structure_after"]
    assert after["heads_per_layer"] == [1, 1]  # half the heads, at least one kept per layer
    assert sum(after["ffn_per_layer"]) == 128 - round(0.3 * 128)
    assert record["structure"] == after  # what the pipeline measured on the saved artifact
    assert record["parameters_removed"] == record["parameters_before"] - record["parameters"] > 0
    assert record["input"]["accuracy"] is not None and record["accuracy"] is not None
    assert record["accuracy_before_recovery"] is not None and record["training"]["steps"] == 6
    assert record["latency"]["p50_ms"] > 0
    model = load_model(run_dir / "01-prune")
    assert model_structure(model) == after
    assert stage_json(run_dir, "02-export_onnx")["parity"]["max_abs_diff"] <= 1e-4
    optimized = stage_json(run_dir, "03-optimize_onnx")  # fusions read each layer's own head count
    assert optimized["parity"]["max_abs_diff"] <= 1e-3 and optimized["fused_ops"].get("Attention") == 2


def test_per_layer_prune_without_recovery_is_a_plain_transformers_checkpoint(tmp_path, tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification

    stages = "\n  - kind: prune\n    scope: per_layer\n    ffn: 0.25\n    layers: 1\n    recover: false\n"
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    record = stage_json(run_dir, "01-prune")
    assert record["structure_after"]["ffn_per_layer"] == [48] and record["structure_after"]["layers"] == 1
    assert "training" not in record
    config = json.loads((run_dir / "01-prune" / "config.json").read_text())
    assert FFN_WIDTHS_KEY not in config and config["intermediate_size"] == 48
    plain = AutoModelForSequenceClassification.from_pretrained(run_dir / "01-prune")  # uniform widths
    assert count_parameters(plain)["parameters"] == record["parameters"]


def test_parameter_budget(tmp_path, tiny_classifier_dir):
    base = count_parameters(load_model(tiny_classifier_dir))["parameters"]
    budget = base - 6000
    stages = f"\n  - kind: prune\n    max_parameters: {budget}\n    recover: false\n"
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "01-prune")
    assert record["parameters"] <= budget


def test_unstructured_reaches_the_sparsity_and_warns(tmp_path, tiny_classifier_dir, caplog):
    stages = """
  - kind: prune
    method: unstructured
    sparsity: 0.6
    prune_every: 2
    schedule_end: 0.5
    max_steps: 10
    batch_size: 8
    learning_rate: 1.0e-3
"""
    with caplog.at_level(logging.WARNING):
        run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    record = stage_json(run_dir, "01-prune")
    assert record["sparsity"]["encoder_linear"] == pytest.approx(0.6, abs=1e-3)
    schedule = record["sparsity"]["schedule"]
    assert [s["step"] for s in schedule] == [2, 4, 6, 8, 10]
    assert 0 < schedule[0]["sparsity"] < schedule[1]["sparsity"] < 0.6 and schedule[2]["sparsity"] == 0.6
    assert "dense runtimes" in record["warning"] and "no speed" in record["warning"]
    assert any("no speed" in r.getMessage() for r in caplog.records)
    model = load_model(run_dir / "01-prune")  # masks made permanent: a plain checkpoint
    assert not any("_orig" in k or "_mask" in k for k in model.state_dict())
    from compress.stages.prune.surgery import prunable_linears, sparsity_of

    assert sparsity_of(prunable_linears(model)) == pytest.approx(0.6, abs=1e-3)
    assert record["weight_sparsity"] > 0  # the pipeline's count over every matrix (embeddings dominate it)
    assert record["structure"] == record["structure_before"]  # no unit removed: same shapes, zeros inside


BAD = {
    "nothing to remove": ("method: structured", r"stages\[0\]: prune: nothing to remove: set heads, ffn, layers"),
    "heads out of range": ("heads: 1.0", r"stages\[0\]\.heads: Input should be less than 1"),
    "budget and fractions": ("heads: 0.3\n    max_parameters: 1000", r"max_parameters replaces heads/ffn/layers"),
    "sparsity on structured": ("heads: 0.3\n    sparsity: 0.5",
                               r"prune: sparsity applies to method: unstructured, not structured"),
    "heads on unstructured": ("method: unstructured\n    sparsity: 0.5\n    heads: 0.3",
                              r"prune: heads applies to method: structured, not unstructured"),
    "no sparsity": ("method: unstructured", r"method unstructured needs sparsity"),
    "schedule backwards": ("method: unstructured\n    sparsity: 0.5\n    schedule_start: 0.8\n    schedule_end: 0.5",
                           r"schedule_end \(0\.5\) must be after schedule_start \(0\.8\)"),
    "unknown method": ("method: movement", r"stages\[0\]\.method: Input should be 'structured' or 'unstructured'"),
    "unknown scope": ("heads: 0.3\n    scope: local", r"stages\[0\]\.scope: Input should be 'global' or 'per_layer'"),
    "typo": ("head: 0.3", r"stages\[0\]\.head: unknown field \(did you mean 'heads'\?\)"),
    "kd_weight": ("heads: 0.3\n    kd_weight: 1",
                  r"stages\[0\]: prune: kd_weight is renamed to distillation\.soft_target_weight$"),
    "temperature": ("heads: 0.3\n    temperature: 3",
                    r"stages\[0\]: prune: temperature is renamed to distillation\.temperature$"),
    "hidden weight": ("heads: 0.3\n    distillation: {hidden_weight: 1}",
                      r"stages\[0\]\.distillation: hidden_weight applies to distill only"),
    "attention weight": ("heads: 0.3\n    distillation: {attention_weight: 0.5}",
                         r"stages\[0\]\.distillation: attention_weight applies to distill only"),
    "all weights zero": ("heads: 0.3\n    distillation: {soft_target_weight: 0, label_weight: 0}",
                         r"stages\[0\]\.distillation: every loss weight is 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_prune_config_is_one_line_naming_the_field(recipe_dir, case):
    body, pattern = BAD[case]
    message = recipe_error(recipe_dir, tiny_recipe_text(stages=f"\n  - kind: prune\n    {body}\n"))
    assert re.search(pattern, message), message
