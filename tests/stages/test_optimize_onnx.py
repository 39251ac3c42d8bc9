import logging

import pytest

from tests.helpers import run_tiny, stage_json


def test_optimize_fuses_attention_and_layernorm(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: optimize_onnx\n")
    record = stage_json(run_dir, "02-optimize_onnx")
    fused = record["fused_ops"]
    assert fused.get("Attention") == 2  # one per layer
    assert fused.get("SkipLayerNormalization", 0) >= 2
    assert fused.get("EmbedLayerNormalization") == 1
    assert record["fusion_rules"] == {"model_type": "bert", "rules": "bert", "from": "optimum ORTConfigManager"}
    assert record["parity"]["max_abs_diff"] <= record["parity"]["atol"] == 1e-3  # a float graph's default
    assert record["accuracy"] == stage_json(run_dir, "01-export_onnx")["accuracy"]


@pytest.mark.parametrize("model_type, family, source", [
    ("mpnet", "bert", "optimum ORTConfigManager"),  # was a fallback with a warning before optimum's table
    ("deberta-v2", "bert", "optimum ORTConfigManager"),
    ("xlm-roberta", "bert", "optimum ORTConfigManager"),
    ("vit", "vit", "optimum ORTConfigManager"),
    ("swin", "swin", "onnxruntime.transformers"),  # ORT's optimizer knows it by name; optimum's table does not
])
def test_fusion_rules_come_from_optimum(model_type, family, source, tmp_path, caplog):
    from compress.stages.optimize_onnx import fusion_family

    with caplog.at_level(logging.WARNING):
        assert fusion_family(model_type, tmp_path / "config.json") == (family, source)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("model_type", ["no-such-arch", None])
def test_unknown_model_type_is_one_clear_line(model_type, tmp_path):
    from compress.errors import StageError
    from compress.stages.optimize_onnx import fusion_family

    with pytest.raises(StageError) as info:
        fusion_family(model_type, tmp_path / "config.json")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "config.json") in message and repr(model_type) in message
    assert "remove the optimize_onnx stage" in message


def test_mpnet_qkv_projections_are_packed_and_int8_computes_the_same(tmp_path, tiny_mpnet_dir):
    """MPNet's attention becomes ONNX Attention (not ORT's, which would hold q/k/v packed), so
    its q/k/v stay three MatMuls on one input: packed into one MatMul + bias Add + Split, dynamic
    INT8 runs one kernel instead of three, and with per-channel weight scales the packed graph
    computes what the separate projections do."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compress.artifacts import ONNXModel
    from compress.stages.optimize_onnx import optimize_onnx

    run_dir = run_tiny(tmp_path, tiny_mpnet_dir, "\n  - kind: export_onnx\n  - kind: optimize_onnx\n")
    record = stage_json(run_dir, "02-optimize_onnx")
    assert record["fused_ops"]["MatMul (packed projections)"] == 4 and record["fused_ops"]["Attention"] == 4
    assert record["parity"]["passed"] and record["parity"]["label_agreement"] == 1.0
    graph = onnx.load(run_dir / "02-optimize_onnx" / "model.onnx").graph
    packed = [n.name for n in graph.node if n.op_type == "MatMul" and "q+k+v" in n.name]
    assert packed == [f"/mpnet/encoder/layer.{i}/attention/attn/q+k+v/MatMul" for i in range(4)]

    export = ONNXModel(run_dir / "01-export_onnx")
    feed = {"input_ids": np.array([[0, 7, 8, 9, 10, 2]] * 2, np.int64),
            "attention_mask": np.array([[1] * 6, [1] * 4 + [0] * 2], np.int64)}
    logits = {}
    for pack in (True, False):
        fused, _, _ = optimize_onnx(export, tmp_path / f"fused-{pack}", opt_level=0, pack_projections=pack)
        quantize_dynamic(fused.onnx_path, tmp_path / f"int8-{pack}.onnx", per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],  # not ONNX Attention
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        session = ort.InferenceSession(tmp_path / f"int8-{pack}.onnx", providers=["CPUExecutionProvider"])
        logits[pack] = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
    np.testing.assert_allclose(logits[True], logits[False], rtol=0, atol=1e-6)


def _mpnet_feed():
    """Two texts padded to one length, one of them to a single real token (a row of the mask
    that sees one key), the other unpadded."""
    import numpy as np

    return {"input_ids": np.array([[0, 7, 8, 9, 10, 11, 12, 2], [0, 1, 1, 1, 1, 1, 1, 1]], np.int64),
            "attention_mask": np.array([[1] * 8, [1] + [0] * 7], np.int64)}


@pytest.mark.parametrize("pack", [True, False])
def test_mpnet_attention_becomes_onnx_attention_with_the_same_logits(tmp_path, tiny_mpnet_dir, pack):
    """ORT's BERT rules leave MPNet's position-biased attention as ~a dozen nodes per layer; the
    encoder rewrite makes each layer one ONNX Attention (opset 23) reading the position bias and
    the padding mask summed once, and the logits stay those of the export, padding included."""
    from collections import Counter

    import numpy as np
    import onnx
    import onnxruntime as ort

    from compress.artifacts import ONNXModel
    from compress.stages.optimize_onnx import optimize_onnx

    run_dir = run_tiny(tmp_path, tiny_mpnet_dir, "\n  - kind: export_onnx\n")
    export = ONNXModel(run_dir / "01-export_onnx")
    fused, counts, _ = optimize_onnx(export, tmp_path / "fused", opt_level=0, pack_projections=pack)
    kept, kept_counts, _ = optimize_onnx(export, tmp_path / "kept", opt_level=0, fuse_attention=False,
                                         pack_projections=pack)
    model = onnx.load(fused.onnx_path)
    ops = Counter(n.op_type for n in model.graph.node)
    assert counts["Attention"] == ops["Attention"] == 4 and ops["Softmax"] == 0
    assert "Attention" not in kept_counts and Counter(n.op_type for n in onnx.load(kept.onnx_path).graph.node)[
        "Softmax"] == 4
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    masks = {n.input[3] for n in attention}
    assert len(masks) == 1  # the position bias + padding mask sum is computed once for all layers
    assert {a.name: onnx.helper.get_attribute_value(a) for a in attention[0].attribute} == pytest.approx(
        {"scale": 1 / np.sqrt(16), "q_num_heads": 2, "kv_num_heads": 2})  # hidden 32, 2 heads
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 23
    logits = {}
    for name, path in (("export", export.onnx_path), ("fused", fused.onnx_path), ("kept", kept.onnx_path)):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits[name] = session.run(None, _mpnet_feed())[0]
    np.testing.assert_allclose(logits["fused"], logits["export"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits["kept"], logits["export"], rtol=0, atol=1e-5)


def test_mpnet_fused_attention_quantizes_every_projection(tmp_path, tiny_mpnet_dir):
    """After the rewrite ptq's dynamic INT8 still reaches every weight MatMul (the fused node's
    output is typed, so ORT's quantizer does not skip what follows it) and leaves the ONNX
    Attention nodes as they are (ORT's quantizer would take them for its own Attention op)."""
    from collections import Counter

    import onnx

    run_dir = run_tiny(tmp_path, tiny_mpnet_dir, "\n  - kind: export_onnx\n  - kind: optimize_onnx\n"
                       "  - kind: ptq\n    mode: dynamic\n    per_channel: true\n")
    float_ops = Counter(n.op_type for n in onnx.load(run_dir / "02-optimize_onnx" / "model.onnx").graph.node)
    int8_ops = Counter(n.op_type for n in onnx.load(run_dir / "03-ptq" / "model.onnx").graph.node)
    assert float_ops["MatMul"] == 4 * 4  # packed q/k/v, o, FFN in and out, per layer
    assert int8_ops["MatMul"] == 0 and int8_ops["Attention"] == 4
    coverage = stage_json(run_dir, "03-ptq")["int8_coverage"]
    assert coverage["float_matmul_nodes"] == 4  # the attention products, inside the four Attention nodes


def test_mpnet_with_pruned_heads_fuses_each_layer_with_its_own_heads(tmp_path, tiny_mpnet_dir):
    """prune removes MPNet heads (each layer then takes its kept heads' columns of the shared
    position bias); the exported graph still fuses into one ONNX Attention per layer, each with
    its layer's head count, and the chain's parity checks hold through dynamic INT8."""
    import onnx

    run_dir = run_tiny(tmp_path, tiny_mpnet_dir, "\n  - kind: prune\n    heads: 0.4\n    recover: false"
                       "\n  - kind: export_onnx\n  - kind: optimize_onnx\n  - kind: ptq\n")
    heads = stage_json(run_dir, "01-prune")["structure_after"]["heads_per_layer"]
    assert sum(heads) < 8 and min(heads) >= 1
    record = stage_json(run_dir, "03-optimize_onnx")
    assert record["fused_ops"]["Attention"] == 4 and record["parity"]["passed"]
    attention = [n for n in onnx.load(run_dir / "03-optimize_onnx" / "model.onnx").graph.node
                 if n.op_type == "Attention"]
    assert [onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "q_num_heads"))
            for n in attention] == heads
    ptq = stage_json(run_dir, "04-ptq")
    assert ptq["int8_coverage"]["int8_matmul_nodes"] > 0 and ptq["labels_vs_input"]["agreement"] >= 0.9
