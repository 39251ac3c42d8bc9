"""optimize_onnx's split of ONNX Runtime fused ops whose CPU kernels are slower than their parts:
the same function, and a session that does not fuse the parts back."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.stages.optimize_onnx.split_fused import split_fused_ops
from tests.helpers import run_tiny, stage_json, validate_warnings

HIDDEN, FFN = 16, 32


def _graph(nodes, outputs: list[str]) -> onnx.ModelProto:
    """x and skip (batch, seq, HIDDEN) in; gamma, beta, bias and a (HIDDEN, FFN) weight as initializers."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
               (("gamma", [HIDDEN]), ("beta", [HIDDEN]), ("bias", [HIDDEN]), ("w", [HIDDEN, FFN]),
                ("ffn_bias", [FFN]))]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", HIDDEN]) for n in ("x", "skip")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _encoder_block() -> onnx.ModelProto:
    """A post-LN encoder's residual + LayerNorm, then MatMul -> BiasGelu, as ORT's optimizer writes them."""
    return _graph([
        helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["h"],
                         domain="com.microsoft", epsilon=1e-12, name="skip_ln"),
        helper.make_node("MatMul", ["h", "w"], ["mm"], name="ffn_in"),
        helper.make_node("BiasGelu", ["mm", "ffn_bias"], ["y"], domain="com.microsoft", name="bias_gelu"),
    ], ["y"])


def _session(model: onnx.ModelProto, optimized_path=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feed(batch=3, seq=5):
    rng = np.random.default_rng(1)
    return {n: rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32) for n in ("x", "skip")}


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_split_computes_the_same_and_the_session_does_not_refuse_it(tmp_path):
    fused = _encoder_block()
    split = _copy(fused)
    assert split_fused_ops(split, ["SkipLayerNormalization", "BiasGelu"]) == {"SkipLayerNormalization": 1,
                                                                            "BiasGelu": 1}
    assert [n.op_type for n in split.graph.node] == ["Sum", "LayerNormalization", "MatMul", "Add", "Gelu"]
    feed = _feed()
    expected, got = _session(fused).run(None, feed)[0], _session(split, tmp_path / "s.onnx").run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # ORT's SkipLayerNormFusion would turn Add + LayerNormalization back into the slow kernel; Sum stays
    session_ops = [n.op_type for n in onnx.load(tmp_path / "s.onnx").graph.node]
    assert "SkipLayerNormalization" not in session_ops and "LayerNormalization" in session_ops


def test_unnamed_nodes_get_distinct_part_names():
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["h1"], domain="com.microsoft",
                              epsilon=1e-12),
             helper.make_node("SkipLayerNormalization", ["h1", "skip", "gamma", "beta"], ["h2"],
                              domain="com.microsoft", epsilon=1e-12)]
    fused = _graph(nodes, ["h2"])
    split = _copy(fused)
    assert split_fused_ops(split, ["SkipLayerNormalization"]) == {"SkipLayerNormalization": 2}
    names = [n.name for n in split.graph.node]
    assert len(set(names)) == len(names) == 4
    feed = _feed()
    np.testing.assert_allclose(_session(split).run(None, feed)[0], _session(fused).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_only_the_named_ops_are_split():
    model = _encoder_block()
    assert split_fused_ops(model, ["BiasGelu"]) == {"BiasGelu": 1}
    assert [n.op_type for n in model.graph.node][0] == "SkipLayerNormalization"
    untouched = _encoder_block()
    assert split_fused_ops(untouched, []) == {} and untouched == _encoder_block()


def test_sum_output_that_is_read_keeps_its_name_and_value():
    """Output 3 of SkipLayerNormalization (input + skip + bias) feeds the next residual in some graphs."""
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
                              ["y", "", "", "residual"], domain="com.microsoft", epsilon=1e-12, name="skip_ln"),
             helper.make_node("Mul", ["residual", "y"], ["z"], name="reads_both")]
    fused = _graph(nodes, ["z"])
    split = _copy(fused)
    assert split_fused_ops(split, ["SkipLayerNormalization"]) == {"SkipLayerNormalization": 1}
    assert split.graph.node[0].op_type == "Sum" and split.graph.node[0].output[0] == "residual"
    feed = _feed()
    np.testing.assert_allclose(_session(split).run(None, feed)[0], _session(fused).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_a_node_whose_mean_output_is_read_stays_fused():
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y", "mean"],
                              domain="com.microsoft", epsilon=1e-12, name="skip_ln")]
    model = _graph(nodes, ["y", "mean"])
    assert split_fused_ops(model, ["SkipLayerNormalization"]) == {}
    assert [n.op_type for n in model.graph.node] == ["SkipLayerNormalization"]


@pytest.mark.parametrize("inputs", [["x", "skip", "gamma"], ["x", "skip", "gamma", "bias"]])
def test_skip_simplified_layer_norm_splits_to_an_rms_norm(inputs):
    """The simplified op has no beta: its fourth input is the bias, added before the norm."""
    nodes = [helper.make_node("SkipSimplifiedLayerNormalization", inputs, ["y"],
                              domain="com.microsoft", epsilon=1e-6, name="skip_rms")]
    fused = _graph(nodes, ["y"])
    split = _copy(fused)
    assert split_fused_ops(split, ["SkipSimplifiedLayerNormalization"]) == {"SkipSimplifiedLayerNormalization": 1}
    assert [n.op_type for n in split.graph.node] == ["Sum", "SimplifiedLayerNormalization"]
    feed = _feed()
    np.testing.assert_allclose(_session(split).run(None, feed)[0], _session(fused).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def _graph_ops(run_dir, stage: str) -> set[str]:
    return {n.op_type for n in onnx.load(run_dir / stage / "model.onnx").graph.node}


def test_optimize_onnx_splits_for_a_cpu_runtime_by_default(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n{extra}  - kind: ptq\n"
    default = run_tiny(tmp_path / "default", tiny_classifier_dir, stages.format(extra=""))
    kept = run_tiny(tmp_path / "kept", tiny_classifier_dir, stages.format(extra="    split_for_cpu: []\n"))
    record = stage_json(default, "02-optimize_onnx")
    # ORT's optimizer still fuses; the split is counted beside its fusions
    assert record["fused_ops"]["split SkipLayerNormalization"] == record["fused_ops"]["SkipLayerNormalization"] >= 2
    assert record["fused_ops"]["split BiasGelu"] == record["fused_ops"]["BiasGelu"] == 2
    assert "split SkipLayerNormalization" not in stage_json(kept, "02-optimize_onnx")["fused_ops"]
    assert {"SkipLayerNormalization", "BiasGelu"} & _graph_ops(default, "02-optimize_onnx") == set()
    assert {"SkipLayerNormalization", "BiasGelu"} <= _graph_ops(kept, "02-optimize_onnx")
    assert {"Sum", "LayerNormalization", "Gelu"} <= _graph_ops(default, "03-ptq")
    assert record["parity"]["max_abs_diff"] <= record["parity"]["atol"]
    assert record["accuracy"] == stage_json(kept, "02-optimize_onnx")["accuracy"]


@pytest.mark.parametrize("later, select_target, warned", [
    ("", None, False),
    ("  - kind: build_engine\n", None, True),  # TensorRT builds its own LayerNorm kernels
    ("", "ort-cuda", True),
    ("", "ort-cpu", False),
    ("    split_for_cpu: []\n  - kind: build_engine\n", None, False),
])
def test_validate_warns_when_the_split_is_for_a_gpu(later, select_target, warned, recipe_dir):
    from tests.conftest import tiny_recipe_text

    text = tiny_recipe_text(stages=f"\n  - kind: export_onnx\n  - kind: optimize_onnx\n{later}")
    if select_target:
        text += f"select:\n  target: {select_target}\n  max_metric_drop: 1.0\n"
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    warning = validate_warnings(path)
    assert len(warning) == int(warned), warning
    if warned:
        assert warning[0].startswith(f"warning: {path}: stages[1].split_for_cpu: SkipLayerNormalization, BiasGelu")
        assert "split_for_cpu: []" in warning[0]


def test_the_bias_goes_to_the_matmul_branch_where_dynamic_int8_folds_it(tmp_path):
    """A three-input Sum with the bias broadcast is slow on CPU; the bias Add straight after the
    MatMul that produced the residual branch becomes the INT8 MatMul's own bias."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = _graph([
        helper.make_node("MatMul", ["x", "w_out"], ["branch"], name="out_proj"),
        helper.make_node("SkipLayerNormalization", ["branch", "skip", "gamma", "beta", "bias"], ["y"],
                         domain="com.microsoft", epsilon=1e-12, name="skip_ln"),
    ], ["y"])
    w_out = np.random.default_rng(2).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    fused.graph.initializer.append(numpy_helper.from_array(w_out, "w_out"))
    split = _copy(fused)
    split_fused_ops(split, ["SkipLayerNormalization"])
    assert [(n.op_type, list(n.input)) for n in split.graph.node][:3] == [
        ("MatMul", ["x", "w_out"]), ("Add", ["branch", "bias"]), ("Sum", ["skip_ln/biased", "skip"])]
    feed = _feed()
    np.testing.assert_allclose(_session(split).run(None, feed)[0], _session(fused).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)
    onnx.save(split, tmp_path / "split.onnx")
    quantize_dynamic(tmp_path / "split.onnx", tmp_path / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8)
    _session(onnx.load(tmp_path / "int8.onnx"), tmp_path / "session.onnx")
    session_nodes = onnx.load(tmp_path / "session.onnx").graph.node
    assert [n.op_type for n in session_nodes if n.op_type in ("Add", "Sum", "DynamicQuantizeMatMul")] == [
        "DynamicQuantizeMatMul", "Sum"]
    matmul = next(n for n in session_nodes if n.op_type == "DynamicQuantizeMatMul")
    assert len(matmul.input) == 5 and matmul.input[4]  # the bias input, set


def test_a_bias_with_no_matmul_branch_stays_in_the_sum():
    model = _encoder_block()
    split_fused_ops(model, ["SkipLayerNormalization"])
    assert list(model.graph.node[0].input) == ["x", "skip", "bias"]
