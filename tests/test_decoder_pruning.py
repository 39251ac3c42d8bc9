"""Pruning and layer subsets of a llama-style decoder (compress.blocks' decoder layout) on tiny
random llamas with grouped-query attention: exact parameter arithmetic, the units removed are
the ones silenced, checkpoints load back with the same logits, the KV cache indexes stay
0..n-1, and heads are refused where KV groups cannot go."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.errors import StageError
from compress.models import (
    FFN_WIDTHS_KEY,
    count_parameters,
    keep_layers_,
    load_model,
    model_structure,
)
from compress.stages.prune.importance import (
    PrunePlan,
    plan_budget,
    plan_fractions,
    taylor_importance,
)
from compress.stages.prune.surgery import apply_plan_

HIDDEN, HEADS, KV, FFN, HEAD_DIM = 32, 4, 2, 64, 8
REP = HEADS // KV  # query heads per KV group


def _llama(layers=3, kv=KV, tied=False, layer_types=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=kv, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    if layer_types:  # as Qwen2/Mistral configs carry one (checked to stay in step with the layers)
        cfg.layer_types = [f"full_attention_{i}" for i in range(layers)]
    return LlamaForCausalLM(cfg).eval()


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (4, 12), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _silence_(model, groups: dict[int, list[int]], neurons: dict[int, list[int]]) -> None:
    """Zero the output-projection columns of these KV groups and FFN neurons: they no longer
    reach the output (the removed model must then compute the same logits)."""
    width = REP * HEAD_DIM
    with torch.no_grad():
        for i, gs in groups.items():
            for g in gs:
                model.model.layers[i].self_attn.o_proj.weight[:, g * width:(g + 1) * width] = 0
        for i, ns in neurons.items():
            model.model.layers[i].mlp.down_proj.weight[:, ns] = 0


def test_removed_units_are_exactly_the_parameter_arithmetic_and_the_silenced_ones():
    """Silencing a KV group and some neurons, then removing them, leaves the logits unchanged
    (so the right q/k/v rows and o/down columns went) and removes exactly their parameters."""
    model = _llama()
    groups, neurons = {0: [1], 1: [0], 2: [1]}, {0: [3, 17, 40], 1: [0], 2: list(range(10))}
    _silence_(model, groups, neurons)
    batch = _batches(1, seed=5)[0]
    want, before = _logits(model, batch), count_parameters(model)["parameters"]
    apply_plan_(model, PrunePlan(layers=[], heads=groups, ffn=neurons))
    torch.testing.assert_close(_logits(model, batch), want, atol=1e-5, rtol=0)
    group_cost = 2 * REP * HEAD_DIM * HIDDEN + 2 * HEAD_DIM * HIDDEN  # q rows, o columns, k and v rows
    neuron_cost = 3 * HIDDEN  # gate and up rows, down column (no MLP bias)
    assert before - count_parameters(model)["parameters"] == 3 * group_cost + 14 * neuron_cost
    assert model_structure(model) == {"layers": 3, "hidden_size": HIDDEN, "heads_per_layer": [2, 2, 2],
                                      "kv_heads_per_layer": [1, 1, 1], "ffn_per_layer": [61, 63, 54]}
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, HEAD_DIM)


def test_a_unit_whose_gate_gradient_is_zero_is_chosen_first():
    model = _llama()
    _silence_(model, {0: [0], 1: [1], 2: [0]}, {i: [5] for i in range(3)})
    imp = taylor_importance(model, _batches())
    assert all(float(imp.heads[i][g]) == 0 for i, g in ((0, 0), (1, 1), (2, 0)))
    assert all(float(imp.ffn[i][5]) == 0 for i in range(3))
    plan = plan_fractions(imp, heads=0.5, ffn=1 / FFN, n_layers=0, scope="global", uniform_heads=True)
    assert plan.heads == {0: [0], 1: [1], 2: [0]}  # each layer's own silent group, one per layer
    assert plan.ffn == {0: [5], 1: [5], 2: [5]}  # 3 of 192 neurons globally: the three silent ones


def test_the_least_important_layer_goes_and_the_cache_indexes_are_renumbered():
    """A block whose attention and MLP write nothing is removed; the blocks after it get
    layer_idx 0..n-1 (the KV cache is indexed by it) and generation with a cache still runs."""
    model = _llama(layers=3, layer_types=True)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    batch = _batches(1)[0]
    want = _logits(model, batch)
    imp = taylor_importance(model, _batches())
    assert float(imp.layers[1]) == 0
    plan = plan_fractions(imp, heads=0, ffn=0, n_layers=1, scope="global", uniform_heads=True)
    assert plan.layers == [1]
    apply_plan_(model, plan)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 2
    assert model.config.layer_types == ["full_attention_0", "full_attention_2"]
    torch.testing.assert_close(_logits(model, batch), want, atol=1e-5, rtol=0)
    cached = model.generate(batch["input_ids"][:1, :5], attention_mask=batch["attention_mask"][:1, :5],
                            max_new_tokens=4, do_sample=False, pad_token_id=0)
    uncached = model.generate(batch["input_ids"][:1, :5], attention_mask=batch["attention_mask"][:1, :5],
                              max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("tied", [False, True])
def test_a_pruned_decoder_saves_and_loads_back_with_the_same_logits(tmp_path, tied):
    """Non-uniform FFN widths (intermediate_sizes), fewer KV groups and a layer gone: the
    task's load_model rebuilds the shapes; a tied output embedding (SmolLM2) stays tied."""
    from compress.tasks import get_task

    model = _llama(tied=tied)
    apply_plan_(model, PrunePlan(layers=[2], heads={0: [0], 1: [1]}, ffn={0: list(range(9)), 1: [2, 3]}))
    model.save_pretrained(tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config[FFN_WIDTHS_KEY] == [55, 62] and config["num_hidden_layers"] == 2
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, HEAD_DIM)
    reloaded = get_task("causal-lm").load_model(tmp_path / "pruned")
    assert model_structure(reloaded) == model_structure(model)
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1]
    batch = _batches(1, seed=2)[0]
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch), atol=1e-5, rtol=0)
    if tied:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_uniform_widths_are_a_plain_transformers_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _llama(layers=2)
    apply_plan_(model, PrunePlan(layers=[], heads={0: [1], 1: [0]}, ffn={0: [1, 2], 1: [7, 8]}))
    model.save_pretrained(tmp_path / "p")
    assert FFN_WIDTHS_KEY not in json.loads((tmp_path / "p" / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    batch = _batches(1)[0]
    torch.testing.assert_close(_logits(plain, batch), _logits(model, batch), atol=1e-5, rtol=0)


def test_kv_groups_go_in_equal_numbers_and_a_fraction_of_none_is_refused():
    model = _llama()
    imp = taylor_importance(model, _batches(1))
    with pytest.raises(StageError, match=r"heads: 0.2 of 2 KV groups per layer removes none"):
        plan_fractions(imp, heads=0.2, ffn=0, n_layers=0, scope="global", uniform_heads=True)
    with pytest.raises(StageError, match="same number of KV groups in every layer"):
        apply_plan_(copy.deepcopy(model), PrunePlan(layers=[], heads={0: [0]}, ffn={}))
    plan = plan_fractions(imp, heads=0.9, ffn=0, n_layers=0, scope="per_layer", uniform_heads=True)
    assert all(len(v) == KV - 1 for v in plan.heads.values())  # one group always stays


def test_a_decoder_budget_removes_ffn_neurons_only():
    model = _llama()
    imp = taylor_importance(model, _batches(1))
    budget = count_parameters(model)["parameters"] - 50 * 3 * HIDDEN
    plan = plan_budget(model, imp, budget, heads=False)
    assert plan.heads == {} and sum(map(len, plan.ffn.values())) == 50
    apply_plan_(model, plan)
    assert count_parameters(model)["parameters"] <= budget


def test_keep_layers_renumbers_the_attention_and_refuses_out_of_range():
    model = _llama(layers=3)
    keep_layers_(model, [0, 2])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 2
    with pytest.raises(StageError, match=r"keep_layers \[5\] out of range"):
        keep_layers_(model, [0, 5])


def test_heads_without_room_and_other_architectures_are_refused_by_name():
    from compress.blocks import find_layout, layout_of

    assert find_layout(_llama(kv=1)).heads_refusal().startswith("has 1 key/value head per layer")
    assert find_layout(_llama()).heads_refusal() is None
    across = _llama()  # a norm over the whole query projection (OLMo2's q_norm) cannot lose heads
    for layer in across.model.layers:
        layer.self_attn.q_norm = torch.nn.LayerNorm(HEADS * HEAD_DIM)
    assert find_layout(across).heads_refusal().startswith("normalises across all heads (q_norm")
    per_head = _llama()  # Qwen3's q_norm over one head's width is fine
    for layer in per_head.model.layers:
        layer.self_attn.q_norm = torch.nn.LayerNorm(HEAD_DIM)
    assert find_layout(per_head).heads_refusal() is None

    class Fused(torch.nn.Module):  # e.g. Phi-3's fused qkv_proj: not the llama layout
        def __init__(self):
            super().__init__()
            self.base_model = torch.nn.Module()
            self.base_model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(StageError, match=r"^Fused: only BERT-style encoders .* and llama-style decoders"):
        layout_of(Fused())


def test_a_smaller_decoder_config_student_keeps_its_attention_shape_consistent():
    from compress.stages.distill.student import student_from_config

    teacher = _llama(layers=3)
    student, layer_map = student_from_config(teacher, None, 2, None, None)
    assert layer_map == [1, 2] and student.config.num_key_value_heads == KV and student.config.head_dim == HEAD_DIM
    torch.testing.assert_close(student.model.layers[0].self_attn.q_proj.weight,
                               teacher.model.layers[1].self_attn.q_proj.weight)  # from its mapped teacher layer
    narrow, _ = student_from_config(teacher, 16, None, 2, 32, num_kv_heads=1)
    assert (narrow.config.num_attention_heads, narrow.config.num_key_value_heads, narrow.config.head_dim) == (2, 1, 8)
    assert narrow(**{k: v for k, v in _batches(1)[0].items()}).logits.shape[-1] == 100
    with pytest.raises(StageError, match="not a multiple of the teacher's 2 key/value heads"):
        student_from_config(teacher, None, None, 3, None)


def test_the_decoder_structure_is_recorded_and_a_reload_of_the_plain_model_matches(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    structure = model_structure(model)
    assert structure["kv_heads_per_layer"] == [2, 2] and structure["heads_per_layer"] == [4, 4]


def test_unstructured_masks_cover_every_block_linear_of_a_decoder():
    from compress.stages.prune.surgery import (
        finish_masks_,
        magnitude_prune_,
        sparsity_of,
        start_masks_,
    )

    model = _llama(layers=2)
    params = start_masks_(model)
    assert len(params) == 2 * 7  # q, k, v, o, gate, up, down per block; embeddings and lm_head stay dense
    magnitude_prune_(params, 0.5, "global")
    finish_masks_(params)
    assert sparsity_of(params) == pytest.approx(0.5, abs=1e-3)
    assert float((model.lm_head.weight == 0).float().mean()) == 0
