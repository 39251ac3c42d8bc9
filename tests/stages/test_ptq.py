from tests.helpers import run_tiny, stage_json


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
