"""distill and prune on the tiny GQA llama (causal-lm), through to ONNX with past key/values
and a package whose greedy decode is validated against transformers: the KV cache layout
(layers, KV heads) follows what the stage removed."""

from __future__ import annotations

import json
import shutil

import pytest

from compress.models import load_model, model_structure
from tests.helpers import run_tiny_lm, stage_json

PACKAGE = """  - kind: export_onnx
  - kind: package
    validate_prompts: 2
    validate_new_tokens: 6
"""


def _validated_package(run, name: str, layers: int, kv_heads: int) -> None:
    record = stage_json(run, name)["package"]
    (validated,) = record["validated"]
    assert validated["token_agreement"] == 1.0, validated
    past = json.loads((run / name / "deploy.json").read_text())["past"]
    assert past["layers"] == layers and past["kv_heads"] == kv_heads, past


def test_distilled_layer_subset_lowers_its_loss_and_packages_with_a_renumbered_cache(tiny_llama_dir, tmp_path):
    """keep_layers [1]: the student's only block was the teacher's layer 1, so its attention
    must index the KV cache as layer 0; hidden-state and (eager) attention-map terms train too."""
    run = run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: distill
    keep_layers: [1]
    max_steps: 30
    batch_size: 8
    learning_rate: 3.0e-3
    warmup_ratio: 0.0
    probe_examples: 16
    distillation: {hidden_weight: 1.0, attention_weight: 1.0}
""" + PACKAGE, paragraphs=60, eval_fraction=0.2, latency_iterations=2)
    record = stage_json(run, "01-distill")
    loss = record["distillation_loss"]
    assert loss["after"] < loss["before"], loss
    assert set(loss["parts_final"]) == {"soft_target", "label", "hidden", "attention"}
    assert record["student"]["structure"] == {"layers": 1, "hidden_size": 32, "heads_per_layer": [4],
                                              "kv_heads_per_layer": [2], "ffn_per_layer": [64]}
    assert record["student"]["layer_map"] == [1]
    student = load_model(run / "01-distill")
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0]
    saved = json.loads((run / "01-distill" / "config.json").read_text())
    assert saved.get("_attn_implementation", "sdpa") != "eager"  # eager was for training only
    assert stage_json(run, "02-export_onnx")["parity"]["next_token_agreement"] == 1.0
    _validated_package(run, "03-package", layers=1, kv_heads=2)


def test_pruned_heads_ffn_and_a_layer_export_and_package_with_fewer_kv_heads(tiny_llama_dir, tmp_path):
    run = run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: prune
    heads: 0.5
    ffn: 0.25
    layers: 1
    importance_batches: 4
    max_steps: 4
    batch_size: 8
    learning_rate: 1.0e-3
    warmup_ratio: 0.0
""" + PACKAGE, paragraphs=60, eval_fraction=0.2, latency_iterations=2)
    record = stage_json(run, "01-prune")
    after = record["structure_after"]
    assert after["layers"] == 1 and after["kv_heads_per_layer"] == [1] and after["heads_per_layer"] == [2]
    assert after["ffn_per_layer"] == [64 - 16]
    assert record["structure"] == after  # what the pipeline measured on the saved artifact
    assert record["parameters_removed"] == record["parameters_before"] - record["parameters"]
    layer = 2 * 32 + 4 * 8 * 32 * 2 + 2 * 8 * 32 * 2 + 3 * 64 * 32  # norms, q+o, k+v, gate+up+down
    kv_group = 2 * 8 * 32 * 2 + 2 * 8 * 32  # q+o of its 2 query heads, k+v
    assert record["parameters_removed"] == layer + kv_group + 16 * 3 * 32
    assert record["perplexity_before_recovery"] > 0 and record["training"]["steps"] == 4
    assert model_structure(load_model(run / "01-prune")) == after
    assert stage_json(run, "02-export_onnx")["parity"]["next_token_agreement"] == 1.0
    _validated_package(run, "03-package", layers=1, kv_heads=1)


@pytest.fixture
def llama_one_kv_head(tiny_llama_dir, tmp_path):
    """The tiny llama with multi-query attention (one key/value head per layer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path / "mqa"
    shutil.copytree(tiny_llama_dir, out)
    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.num_key_value_heads = 1
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_heads_of_a_single_kv_head_decoder_are_refused_in_one_line(llama_one_kv_head, tmp_path):
    from compress.errors import StageError

    with pytest.raises(StageError) as info:
        run_tiny_lm(tmp_path, llama_one_kv_head, """  - kind: prune
    heads: 0.5
    recover: false
""", paragraphs=20, eval_fraction=0.2, latency_iterations=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("prune.heads: LlamaForCausalLM has 1 key/value head per layer"), message


def test_the_shipped_causal_lm_distill_recipe_runs_in_tiny_form(tiny_llama_dir, tmp_path):
    """recipes/causal-lm-distill.yaml on the tiny llama and a .txt corpus: half the layers, a
    trained student, fused and weight-compressed, a validated package."""
    from tests.conftest import make_paragraphs
    from tests.helpers import run_shipped_recipe

    (tmp_path / "corpus.txt").write_text("\n\n".join(make_paragraphs(40)))
    run = run_shipped_recipe("causal-lm-distill.yaml", tmp_path, tiny_llama_dir,
                             data={"train": "corpus.txt", "eval_fraction": 0.2, "seed": 3, "max_length": 64})
    record = stage_json(run, "01-distill")
    assert record["student"]["layer_map"] == [1] and record["training"]["steps"] == 2
    assert record["perplexity"] > 0 and record["input"]["perplexity"] > 0
    assert stage_json(run, "03-optimize_onnx")["fused_ops"]["Attention"] == 1
    _validated_package(run, "05-package", layers=1, kv_heads=2)


def test_a_smaller_config_student_learns_from_cached_per_token_teacher_logits(tiny_llama_dir, tmp_path):
    run = run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: distill
    student: {num_layers: 1, intermediate_size: 32, num_kv_heads: 1}
    cache_teacher: true
    max_steps: 20
    batch_size: 8
    learning_rate: 3.0e-3
    warmup_ratio: 0.0
    probe_examples: 16
""", paragraphs=40, eval_fraction=0.2, latency_iterations=1)
    record = stage_json(run, "01-distill")
    assert record["cached_teacher_logits"] is True and record["student"]["layer_map"] == [1]
    assert record["student"]["structure"] == {"layers": 1, "hidden_size": 32, "heads_per_layer": [4],
                                              "kv_heads_per_layer": [1], "ffn_per_layer": [32]}
    loss = record["distillation_loss"]
    assert loss["after"] < loss["before"], loss


def test_hidden_states_against_a_teacher_layer_before_the_final_norm_are_refused(tiny_llama_dir, tmp_path):
    from compress.errors import StageError

    with pytest.raises(StageError, match=r"^distillation.hidden_weight: the student's last layer would imitate "
                                         r"teacher layer 0, .* keep the teacher's last layer \(1\)"):
        run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: distill
    keep_layers: [0]
    max_steps: 1
    distillation: {hidden_weight: 1.0}
""", paragraphs=20, eval_fraction=0.2, latency_iterations=1)
