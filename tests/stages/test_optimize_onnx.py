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
