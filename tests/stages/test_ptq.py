"""ptq on tiny models: dynamic INT8, static Q/DQ with each calibration, the accuracy budget,
INT8 coverage, and bad configs."""

import onnx
import pytest

from compress.onnx_graph import count_int8_coverage
from compress.trt_engine import check_qdq_for_tensorrt
from tests.conftest import tiny_recipe_text
from tests.helpers import recipe_error, run_tiny, stage_json


def test_dynamic_int8_quantizes_the_matmuls_and_shrinks_the_file(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n  - kind: ptq\n    per_channel: true\n"
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    record = stage_json(run_dir, "03-ptq")
    coverage = record["int8_coverage"]
    assert coverage["int8_matmul_nodes"] >= 2 * 2  # at least attention + FFN matmuls in both layers
    assert coverage["int8_ops"].get("QAttention") == 2
    fp32 = stage_json(run_dir, "02-optimize_onnx")
    assert record["size_bytes"] < fp32["size_bytes"] / 3
    assert abs(record["accuracy"] - fp32["accuracy"]) <= 0.1  # 20 eval examples: at most 2 flips


def test_unquantized_op_types_stay_float(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: ptq\n    op_types: [MatMul]\n"
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "02-ptq")
    assert record["int8_coverage"]["int8_matmul_nodes"] > 0
    assert "QAttention" not in record["int8_coverage"]["int8_ops"]


# ---------------------------------------------------------------------------- static Q/DQ

STATIC = "\n  - kind: export_onnx\n  - kind: ptq\n    mode: static\n    calibration_samples: 16\n"


@pytest.mark.parametrize("method", ["MinMax", "Entropy", "Percentile"])
def test_static_qdq_with_each_calibration_method(tmp_path, tiny_classifier_dir, method):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, STATIC + f"    calibration: {method}\n    per_channel: true\n")
    record, fp32 = stage_json(run_dir, "02-ptq"), stage_json(run_dir, "01-export_onnx")
    coverage = record["int8_coverage"]
    # 2 layers x (Q, K, V, scores, context, attention output, FFN in, FFN out) + pooler + classifier
    assert coverage["int8_matmul_nodes"] == 18 and coverage["float_matmul_nodes"] == 0
    assert record["calibration"]["method"] == method and record["calibration"]["samples"] == 16
    graph = onnx.load(str(run_dir / "02-ptq" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulInteger" not in ops
    assert check_qdq_for_tensorrt(run_dir / "02-ptq" / "model.onnx") == []  # symmetric int8
    assert abs(record["accuracy"] - fp32["accuracy"]) <= 0.1


def test_uint8_activations_for_onnx_runtime_are_flagged_for_tensorrt(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, STATIC + "    activation_type: uint8\n")
    assert stage_json(run_dir, "02-ptq")["int8_coverage"]["int8_matmul_nodes"] == 18
    problems = check_qdq_for_tensorrt(run_dir / "02-ptq" / "model.onnx")
    assert problems and "uint8 (asymmetric)" in problems[0]


def test_static_on_a_fused_graph_leaves_attention_float_and_says_so(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n  - kind: ptq\n    mode: static\n" \
             "    calibration_samples: 8\n"
    coverage = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "03-ptq")["int8_coverage"]
    assert coverage["int8_matmul_nodes"] == 8  # FFN in/out, attention output ×2 layers, pooler, classifier
    assert coverage["float_matmul_nodes"] == 2  # the fused Attention nodes: no Q/DQ kernel for them


def test_nodes_to_exclude_stay_float(tmp_path, tiny_classifier_dir):
    # 32 samples: ORT's CalibMaxIntermediateOutputs dropped MinMax data at exact multiples (not used)
    stages = "\n  - kind: export_onnx\n  - kind: ptq\n    mode: static\n    calibration_samples: 32\n" \
             "    nodes_to_exclude: [/classifier/Gemm]\n"
    coverage = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "02-ptq")["int8_coverage"]
    assert coverage["int8_matmul_nodes"] == 17 and coverage["float_matmul_nodes"] == 1


# ---------------------------------------------------------------------------- accuracy budget

SENSITIVE = "/bert/encoder/layer.1/output/dense/MatMul"


def _pretend_one_layer_is_sensitive(monkeypatch):
    """Real quantization, but the measurement flips every prediction whenever SENSITIVE runs
    on dequantized inputs: the budget can only hold with that node in float."""
    import compress.evaluate as evaluate

    real = evaluate.predict_outputs

    def predict(session, encoded, batch_size, desc="evaluating", task=None):
        logits = real(session, encoded, batch_size, desc, task=task)
        if not hasattr(session, "session"):  # a torch model: nothing quantized
            return logits
        graph = onnx.load(session.session._model_path).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        node = next((n for n in graph.node if n.name == SENSITIVE), None)
        if node is not None and producers.get(node.input[0]) == "DequantizeLinear":
            return [row[::-1].copy() for row in logits]
        return logits

    monkeypatch.setattr(evaluate, "predict_outputs", predict)


def test_budget_keeps_the_sensitive_layer_in_float(tmp_path, tiny_classifier_dir, monkeypatch):
    _pretend_one_layer_is_sensitive(monkeypatch)
    # An odd slice: the random tiny model's accuracy on it cannot be exactly 0.5 (on the
    # stratified, balanced eval split a model predicting one class scores 0.5 on 16 examples).
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, STATIC + "    max_accuracy_drop: 0.0\n    budget_samples: 15\n")
    budget = stage_json(run_dir, "02-ptq")["accuracy_budget"]
    assert budget["reference_accuracy"] != 0.5  # else flipping every prediction would not change accuracy
    assert budget["searched"] and budget["met"]
    assert budget["excluded_by_search"] == [SENSITIVE] == budget["nodes_to_exclude"]
    assert next(iter(budget["sensitivity_top"])) == SENSITIVE
    coverage = count_int8_coverage(run_dir / "02-ptq" / "model.onnx")
    assert coverage["int8_matmul_nodes"] == 17 and coverage["float_matmul_nodes"] == 1


def test_budget_already_met_searches_nothing(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, STATIC + "    max_accuracy_drop: 1.0\n    budget_samples: 16\n")
    budget = stage_json(run_dir, "02-ptq")["accuracy_budget"]
    assert budget["met"] and not budget["searched"] and budget["nodes_to_exclude"] == []


def test_budget_search_order_and_clear_failure():
    from compress.errors import StageError
    from compress.stages.ptq.budget import fit_accuracy_budget
    from tests.helpers import toy_budget_problem

    logits_with, reference, score, harm = toy_budget_problem()

    result = fit_accuracy_budget(logits_with, reference, score, ["a", "b", "c"], [], max_drop=0.25)
    assert result.excluded == ["b"] and result.accuracy == 0.75
    assert max(result.sensitivity, key=result.sensitivity.get) == "b"
    harm["d"] = 2  # a quantized node the search may not exclude
    with pytest.raises(StageError, match=r"max_metric_drop 0 not reached.*best INT8 model 0.5000"):
        fit_accuracy_budget(logits_with, reference, score, ["a", "b", "c"], [], max_drop=0.0)


# ---------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("fields, message", [
    ("mode: dynamic\n    calibration: Entropy", "stages[1]: calibration applies to mode: static only"),
    ("mode: static\n    calibration: Histogram", "stages[1].calibration: Input should be 'MinMax'"),
    ("mode: static\n    calibration_samples: 0", "stages[1].calibration_samples: Input should be greater than"),
    ("mode: static\n    percentile: 99.9", "stages[1]: percentile applies to calibration: Percentile only"),
    ("max_accuracy_drop: -0.1", "stages[1].max_accuracy_drop: Input should be greater than or equal to 0"),
    ("exclude_nodes: [x]", "stages[1]: exclude_nodes is now nodes_to_exclude"),
])
def test_bad_ptq_configs_name_the_field(recipe_dir, fields, message):
    assert message in recipe_error(recipe_dir, tiny_recipe_text(stages=f"\n  - kind: export_onnx\n  - kind: ptq\n    {fields}\n"))


def _activation_int8_matmuls(onnx_path) -> int:
    """MatMulInteger nodes whose B is computed at run time (attention's products), not a weight."""
    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name for init in graph.initializer}
    return sum(1 for n in graph.node if n.op_type == "MatMulInteger" and n.input[1] not in weights)


def test_activation_matmuls_quantize_attention_of_an_unfused_graph(tmp_path, tiny_classifier_dir):
    stages = ("\n  - kind: export_onnx\n  - kind: optimize_onnx\n    fuse_attention: false\n"
              "  - kind: ptq\n    activation_matmuls: {flag}\n")
    with_flag = run_tiny(tmp_path / "on", tiny_classifier_dir, stages.format(flag="true"))
    without = run_tiny(tmp_path / "off", tiny_classifier_dir, stages.format(flag="false"))
    fused = stage_json(with_flag, "02-optimize_onnx")["fused_ops"]
    assert "Attention" not in fused and fused.get("SkipLayerNormalization", 0) >= 2  # the other fusions stay
    assert _activation_int8_matmuls(with_flag / "03-ptq" / "model.onnx") == 2 * 2  # QK^T and PV, 2 layers
    assert _activation_int8_matmuls(without / "03-ptq" / "model.onnx") == 0  # ORT's default: weights only
    on, off = stage_json(with_flag, "03-ptq"), stage_json(without, "03-ptq")
    assert on["int8_coverage"]["int8_matmul_nodes"] == off["int8_coverage"]["int8_matmul_nodes"] + 4


@pytest.mark.parametrize("split", ["[]", "[SkipLayerNormalization]"])
def test_activation_matmuls_stay_int8_whatever_the_split(tmp_path, tiny_classifier_dir, split):
    """The tensors optimize_onnx's rewrites create (packed q/k/v, the split's bias Adds) carry
    their types: after a com.microsoft op ONNX shape inference cannot derive them, and ORT's
    quantizer would leave every later layer's attention products float without a word."""
    stages = ("\n  - kind: export_onnx\n  - kind: optimize_onnx\n    fuse_attention: false\n"
              f"    split_for_cpu: {split}\n  - kind: ptq\n    activation_matmuls: true\n")
    run = run_tiny(tmp_path, tiny_classifier_dir, stages)
    assert "MatMul (packed projections)" in stage_json(run, "02-optimize_onnx")["fused_ops"]
    assert _activation_int8_matmuls(run / "03-ptq" / "model.onnx") == 2 * 2  # QK^T and PV, 2 layers
