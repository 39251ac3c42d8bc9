from tests.helpers import run_tiny, stage_json


def test_optimize_fuses_attention_and_layernorm(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: optimize_onnx\n")
    record = stage_json(run_dir, "02-optimize_onnx")
    fused = record["fused_ops"]
    assert fused.get("Attention") == 2  # one per layer
    assert fused.get("SkipLayerNormalization", 0) >= 2
    assert fused.get("EmbedLayerNormalization") == 1
    assert record["parity"]["max_abs_diff"] <= record["parity"]["atol"] == 1e-3  # a float graph's default
    assert record["accuracy"] == stage_json(run_dir, "01-export_onnx")["accuracy"]
