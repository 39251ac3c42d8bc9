"""Pruning maths on tiny models: Taylor importance, plans, physical removal, reload and
ONNX export of pruned shapes, the cubic sparsity schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.blocks import layout_of
from compress.errors import StageError
from compress.models import (
    FFN_WIDTHS_KEY,
    load_model,
    model_structure,
)
from compress.stages.prune.importance import (
    PrunePlan,
    plan_budget,
    plan_fractions,
    taylor_importance,
)
from compress.stages.prune.surgery import (
    apply_plan_,
    cubic_sparsity,
    magnitude_prune_,
    sparsity_of,
    start_masks_,
)

HEAD_DIM = 8


def _model(layers=2, heads=4, ffn=64, arch="bert"):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
    )

    torch.manual_seed(0)
    config_class, model_class = {"bert": (BertConfig, BertForSequenceClassification),
                                 "mpnet": (MPNetConfig, MPNetForSequenceClassification)}[arch]
    cfg = config_class(vocab_size=100, hidden_size=HEAD_DIM * heads, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=ffn, max_position_embeddings=32, num_labels=2)
    return model_class(cfg).eval()


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 100, (4, 6), generator=g),
             "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(n)]


def _silence_(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> None:
    """Zero the output weights of these heads and FFN neurons: they no longer reach the loss."""
    with torch.no_grad():
        for i, hs in heads.items():
            for h in hs:
                layout_of(model).heads_projection(model.base_model.encoder.layer[i]).weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
        for i, ns in neurons.items():
            model.base_model.encoder.layer[i].output.dense.weight[:, ns] = 0


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _hidden(model, batch):
    """The encoder's output: unit scale after its LayerNorm, where a tiny model's logits are ~0.01."""
    with torch.no_grad():
        return model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_pruning_zero_importance_units_leaves_outputs_unchanged(scope):
    model = _model()
    silent_heads, silent_neurons = {0: [1], 1: [3]}, {0: [3, 7, 11, 20], 1: [0, 1, 40, 63]}
    _silence_(model, silent_heads, silent_neurons)
    imp = taylor_importance(model, _batches())
    assert imp.heads[0][1] == 0 and imp.heads[1][3] == 0
    assert (imp.heads[0][[0, 2, 3]] > 0).all() and (imp.ffn[1][2:40] > 0).all()
    plan = plan_fractions(imp, heads=0.25, ffn=4 / 64, n_layers=0, scope=scope)
    assert plan.heads == silent_heads and plan.ffn == silent_neurons and plan.layers == []
    batch = _batches(1, seed=5)[0]
    before = _logits(model, batch)
    params = sum(p.numel() for p in model.parameters())
    apply_plan_(model, plan)
    torch.testing.assert_close(_logits(model, batch), before, atol=1e-5, rtol=1e-5)
    assert model_structure(model)["heads_per_layer"] == [3, 3]
    assert model_structure(model)["ffn_per_layer"] == [60, 60]
    assert sum(p.numel() for p in model.parameters()) < params  # physically smaller


def _strong_position_bias_(model) -> None:
    """A relative position bias large enough that handing a layer another head's column shows."""
    with torch.no_grad():
        model.base_model.encoder.relative_attention_bias.weight.normal_(0, 2.0)


def test_mpnet_pruning_keeps_outputs_and_round_trips(tmp_path):
    """MPNet (the headline teacher's architecture) computes one relative position bias for all
    heads of all layers: zero-importance heads (each layer then takes the bias of the heads it
    kept), FFN neurons and a do-nothing layer go without changing the logits, and the pruned
    checkpoint, a plain transformers one, reloads exactly."""

    model = _model(layers=3, arch="mpnet")
    _strong_position_bias_(model)
    silent_heads, silent_neurons = {0: [1], 2: [0, 2]}, {0: [3, 7, 11, 20], 2: [0, 1, 40, 63]}
    _silence_(model, silent_heads, silent_neurons)
    with torch.no_grad():  # layer 1 adds nothing to the residual stream
        layer = model.base_model.encoder.layer[1]
        for linear in (layout_of(model).heads_projection(layer), layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
    assert layout_of(model).heads_refusal() is None
    imp = taylor_importance(model, _batches())
    plan = plan_fractions(imp, heads=0, ffn=4 / 64, n_layers=1, scope="per_layer")
    plan.heads = silent_heads
    assert plan.layers == [1] and {i: v for i, v in plan.ffn.items() if i != 1} == silent_neurons
    assert all(imp.heads[i][h] == 0 for i, hs in silent_heads.items() for h in hs)
    batch = _batches(1, seed=5)[0]
    before = _hidden(model, batch)
    apply_plan_(model, plan)
    torch.testing.assert_close(_hidden(model, batch), before, atol=1e-5, rtol=1e-5)
    assert model_structure(model)["heads_per_layer"] == [3, 2]
    assert model_structure(model)["ffn_per_layer"] == [60, 60] and model_structure(model)["layers"] == 2
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(tmp_path / "pruned")
    reloaded = load_model(tmp_path / "pruned")
    torch.testing.assert_close(_hidden(reloaded, batch), before, atol=1e-5, rtol=1e-5)
    # the check can fail: layer 0's first three bias columns instead of its kept heads' own
    reloaded.base_model.encoder.layer[0].attention.kept_heads = torch.tensor([0, 1, 2])
    assert (_hidden(reloaded, batch) - before).abs().max() > 1e-3  # 100x the tolerance above


def test_least_important_layer_is_the_one_removed():
    model = _model(layers=3)
    with torch.no_grad():  # layer 1's residual update is 0 in every sub-block: it does nothing
        layer = model.bert.encoder.layer[1]
        layer.attention.output.dense.weight.zero_()
        layer.attention.output.dense.bias.zero_()
        layer.output.dense.weight.zero_()
        layer.output.dense.bias.zero_()
    imp = taylor_importance(model, _batches())
    plan = plan_fractions(imp, heads=0, ffn=0, n_layers=1, scope="global")
    assert plan.layers == [1]


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_pruned_model_saves_reloads_and_exports_to_onnx(tmp_path, minilm_tokenizer_dir, arch):
    """Non-uniform heads and FFN widths and a removed layer: reload gives the same logits, and
    the ONNX export run in ONNX Runtime matches torch (MPNet: each layer's kept heads take
    their columns of the shared position bias in the graph too)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from compress.artifacts import TorchModel
    from compress.stages.export_onnx import export_to_onnx

    model = _model(layers=3, arch=arch)
    if arch == "mpnet":
        _strong_position_bias_(model)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    apply_plan_(model, PrunePlan(layers=[1], heads={0: [0, 2], 2: [3]}, ffn={0: list(range(10)), 2: [5, 6]}))
    assert model_structure(model) == {"layers": 2, "hidden_size": 32, "heads_per_layer": [2, 3],
                                      "ffn_per_layer": [54, 62]}
    model.save_pretrained(tmp_path / "pruned")
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(tmp_path / "pruned")
    import json

    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config[FFN_WIDTHS_KEY] == [54, 62] and config["num_hidden_layers"] == 2
    assert {int(k): sorted(v) for k, v in config["pruned_heads"].items()} == {0: [0, 2], 1: [3]}

    reloaded = load_model(tmp_path / "pruned")
    assert model_structure(reloaded) == model_structure(model)
    batch = _batches(1, seed=3)[0]
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch), atol=0, rtol=0)

    exported = export_to_onnx(TorchModel(tmp_path / "pruned"), tmp_path / "onnx", opset=18)
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy(),
             "token_type_ids": np.zeros_like(batch["input_ids"].numpy())}
    onnx_logits = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    np.testing.assert_allclose(onnx_logits, _logits(model, batch).numpy(), atol=1e-5)


def test_parameter_budget_is_met_and_an_impossible_one_is_refused():
    model = _model()
    imp = taylor_importance(model, _batches())
    total = sum(p.numel() for p in model.parameters())
    budget = total - 5_000  # of ~22.6k, ~12k of them in the encoder
    apply_plan_(model, plan_budget(model, imp, budget))
    assert sum(p.numel() for p in model.parameters()) <= budget
    with pytest.raises(StageError, match=r"max_parameters 1,000: the smallest model .* still has"):
        plan_budget(_model(), imp, 1_000)


def test_cubic_schedule_ramps_from_zero_to_the_target():
    values = [cubic_sparsity(s, 100, 0.8, start=0.1, end=0.6) for s in range(101)]
    assert values[0] == 0 and values[10] == 0
    assert values[60] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[20] - values[10] > values[60] - values[50]  # fast early, slow near the target


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_magnitude_masks_reach_the_sparsity_and_only_grow(scope):
    model = _model()
    params = start_masks_(model)
    magnitude_prune_(params, 0.3, scope)
    first = [m.weight_mask.clone() for m, _ in params]
    magnitude_prune_(params, 0.7, scope)
    assert sparsity_of(params) == pytest.approx(0.7, abs=1e-3)
    for old, (m, _) in zip(first, params):
        assert (m.weight_mask[old == 0] == 0).all()  # once pruned, stays pruned
    if scope == "per_layer":
        for m, n in params:
            assert sparsity_of([(m, n)]) == pytest.approx(0.7, abs=1e-2)
