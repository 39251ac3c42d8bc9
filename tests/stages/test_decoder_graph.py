"""optimize_onnx on a causal LM: the tiny llama's attention with its KV cache (optimum's
text-generation-with-past export) becomes one ONNX Attention node per layer and the
projections that share an input are packed into one MatMul; the fused graph computes what
the export computes, on a left-padded batch (padding query rows that see no key at all) and
over decode steps that feed the cache back; the quantizers and the package take it."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from compress.artifacts import ONNXModel
from tests.decoders import tiny_decoder_onnx


@pytest.fixture(scope="module")
def export(tiny_llama_dir, tmp_path_factory) -> ONNXModel:
    return ONNXModel(tiny_decoder_onnx(tmp_path_factory, tiny_llama_dir))


@pytest.fixture(scope="module")
def fused(export, tmp_path_factory) -> tuple[ONNXModel, dict]:
    from compress.stages.optimize_onnx import optimize_onnx

    model, fusions, _ = optimize_onnx(export, tmp_path_factory.mktemp("fused"), opt_level=0)
    return model, fusions


def ops(model: ONNXModel) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(model.onnx_path)).graph.node)


def generate(path, steps: int = 3) -> list[list[np.ndarray]]:
    """[logits, *present] of a left-padded prefill and of `steps` greedy decode steps."""
    import onnxruntime as ort

    from compress.generation import first_call_feed, positions

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = [(i.name, i.shape, np.float32) for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding: the first query rows of these sequences see no real key
    mask[2, :6] = 0
    feed = {"input_ids": ids, "attention_mask": mask, **first_call_feed(graph, mask)}
    past_names = [n for n, _, _ in graph if n.startswith("past_key_values.")]
    every_position = {n: np.array(0) for n, _, _ in graph if n == "logits_to_keep"}
    results = []
    for _ in range(steps + 1):
        out = session.run(None, feed)
        results.append(out)
        mask = np.concatenate([mask, np.ones((3, 1), mask.dtype)], axis=1)
        feed = {"input_ids": out[0][:, -1].argmax(-1)[:, None], "attention_mask": mask,
                "position_ids": positions(mask)[:, -1:], **dict(zip(past_names, out[1:])), **every_position}
    return results


def test_each_layer_becomes_one_attention_node_on_packed_heads(fused, tiny_llama_dir):
    model, fusions = fused
    layers = json.loads((tiny_llama_dir / "config.json").read_text())["num_hidden_layers"]
    assert fusions["Attention"] == layers
    assert fusions["Attention (batch, seq, hidden)"] == layers  # the head Reshape/Transposes went too
    counts = ops(model)
    assert counts["Attention"] == layers
    for gone in ("Softmax", "IsNaN"):  # the softmax and its NaN guard
        assert counts[gone] == 0, counts
    graph = onnx.load(str(model.onnx_path))
    in_attention = Counter(n.op_type for n in graph.graph.node if "/self_attn/" in n.name)
    assert in_attention["Expand"] == in_attention["Transpose"] == 0, in_attention  # grouped-query repeat, heads
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == 23


def test_the_fused_graph_computes_what_the_export_computes_with_padding_and_cache(export, fused):
    reference, fused_run = generate(export.onnx_path), generate(fused[0].onnx_path)
    for step, (want, got) in enumerate(zip(reference, fused_run)):
        assert all(np.isfinite(t).all() for t in got), step  # padding rows: zeros, never NaN
        real = slice(None) if step else (np.arange(9) >= 6)  # prefill: compare the rows every sequence has
        np.testing.assert_allclose(got[0][:, real], want[0][:, real], atol=1e-4, rtol=0)
        for present_got, present_want in zip(got[1:], want[1:]):
            np.testing.assert_allclose(present_got[..., 6:, :], present_want[..., 6:, :], atol=1e-4, rtol=0)
        assert (got[0][:, -1].argmax(-1) == want[0][:, -1].argmax(-1)).all()


def test_fuse_attention_false_keeps_the_decoder_attention(export, tmp_path):
    from compress.stages.optimize_onnx import optimize_onnx

    model, fusions, _ = optimize_onnx(export, tmp_path, opt_level=0, fuse_attention=False)
    assert "Attention" not in fusions and ops(model)["Attention"] == 0 and ops(model)["Softmax"] > 0


def test_projections_that_share_an_input_are_one_matmul(fused):
    model, fusions = fused
    assert fusions["MatMul (packed projections)"] == 4  # q/k/v and gate/up in each of the 2 layers
    names = {n.name for n in onnx.load(str(model.onnx_path)).graph.node if n.op_type == "MatMul"}
    assert "/model/layers.0/self_attn/q_proj+k_proj+v_proj/MatMul" in names
    assert "/model/layers.1/mlp/gate_proj+up_proj/MatMul" in names
    assert not any(n.endswith(("/k_proj/MatMul", "/up_proj/MatMul")) for n in names)


def test_packing_is_bit_identical_after_weight_compression(export, tmp_path):
    """The packed weight's blocks run along each output column, so MatMulNBits (8-bit, blocks
    of 32) gives the packed and the separate projections exactly the same numbers."""
    from compress.stages.compress_weights import CompressWeightsStage
    from compress.stages.optimize_onnx import optimize_onnx
    from tests.stages.test_compress_weights import fake_ctx

    outputs = []
    for pack in (True, False):
        model, _, _ = optimize_onnx(export, tmp_path / f"fused-{pack}", opt_level=0, pack_projections=pack)
        stage = CompressWeightsStage(kind="compress_weights", backend="onnxruntime", bits=8, group_size=32)
        compressed = stage.run(model, fake_ctx(tmp_path / f"int8-{pack}"))
        outputs.append(generate(compressed.onnx_path, steps=2))
    for packed, separate in zip(*outputs):
        for a, b in zip(packed, separate):
            np.testing.assert_array_equal(a, b)


def test_a_layer_off_the_pattern_stays_as_it_is(export):
    """Layer 1 without its NaN guard (probabilities straight into the value product) does not
    match: only layer 0 is fused, and the graph still runs the same."""
    from compress.stages.optimize_onnx.decoder_graph.attention import (
        fuse_decoder_attention,
    )

    graph = onnx.load(str(export.onnx_path))
    softmax = [n for n in graph.graph.node if n.op_type == "Softmax"][1]
    guard = next(n for n in graph.graph.node if n.op_type == "Where" and softmax.output[0] in n.input)
    for node in graph.graph.node:
        node.input[:] = [softmax.output[0] if name == guard.output[0] else name for name in node.input]
    config = json.loads((export.path / "config.json").read_text())
    counts = fuse_decoder_attention(graph, config["num_attention_heads"], config["num_key_value_heads"])
    assert counts == {"Attention": 1}  # no rotary fusion in the raw export: heads stay 4-D
    assert Counter(n.op_type for n in graph.graph.node)["Softmax"] == 1


def test_recipe_quantizes_and_packages_the_fused_decoder(tiny_llama_dir, tmp_path):
    """export → optimize_onnx → compress_weights (NNCF INT8) → package: the package's own
    greedy check passes on the fused graph; ptq's quantizers leave ONNX's Attention alone."""
    from tests.helpers import run_tiny_lm, stage_json

    run = run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: export_onnx
    parity_samples: 4
  - kind: optimize_onnx
    parity_samples: 4
  - kind: compress_weights
    backend: nncf
    bits: 8
  - kind: package
""", paragraphs=40, eval_fraction=0.25)
    optimized = stage_json(run, "02-optimize_onnx")
    assert optimized["fused_ops"]["Attention"] == 2
    package = stage_json(run, "04-package")
    assert package["package"]["validated"], package
    graph = onnx.load(str(run / "04-package" / "model.onnx"), load_external_data=False)
    assert Counter(n.op_type for n in graph.graph.node)["Attention"] == 2


def test_dynamic_ptq_excludes_onnx_attention(fused, tmp_path):
    from compress.stages.ptq.ort_quantize import with_onnx_attention_excluded

    names = with_onnx_attention_excluded(fused[0].onnx_path, ["x"])
    assert names[0] == "x" and len(names) == 3 and all(n.endswith("/Attention") for n in names[1:])


def test_logits_to_keep_runs_the_head_on_the_last_positions_only(fused):
    """0 gives every position (what evaluation reads), 1 the last one alone, equal to the
    last row of 0; the packaged runtime's Decoder feeds 1."""
    import onnxruntime as ort

    from compress.generation import first_call_feed

    model, fusions = fused
    assert fusions["input logits_to_keep"] == 1
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    graph = [(i.name, i.shape, np.float32) for i in session.get_inputs()]
    ids = np.arange(5, 17)[None]
    mask = np.ones_like(ids)
    feed = {"input_ids": ids, "attention_mask": mask, **first_call_feed(graph, mask)}
    every = session.run(["logits"], feed)[0]
    last = session.run(["logits"], {**feed, "logits_to_keep": np.array(1)})[0]
    assert every.shape[1] == 12 and last.shape[1] == 1
    np.testing.assert_allclose(last[:, 0], every[:, -1], atol=1e-5, rtol=0)


def test_the_packaged_decoder_asks_for_the_last_logits_only(fused):
    import onnxruntime as ort

    from compress.generation import Decoder, past_layout

    session = ort.InferenceSession(str(fused[0].onnx_path), providers=["CPUExecutionProvider"])
    signature = [{"name": i.name, "dtype": "float32", "shape": i.shape} for i in session.get_inputs()]
    decoder = Decoder(session, past_layout(signature))
    assert decoder.last_logits["logits_to_keep"] == 1
    ids = np.arange(5, 17)[None]
    logits, present = decoder.step(ids, np.ones_like(ids))
    assert logits.ndim == 2 and logits.shape[0] == 1 and present[0].shape[2] == 12  # one row of logits, 12 cached
