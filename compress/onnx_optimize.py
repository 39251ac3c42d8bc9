"""ONNX Runtime's transformer graph fusions (Attention, SkipLayerNormalization,
EmbedLayerNormalization, BiasGelu) applied to an exported encoder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from compress.artifacts import ONNXModel, copy_sidecar_files

log = logging.getLogger(__name__)

# Hugging Face model_type → the fusion family in onnxruntime.transformers.
FUSION_FAMILY = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}


def optimize_onnx(model: ONNXModel, out_dir: Path, opt_level: int) -> tuple[ONNXModel, dict[str, int]]:
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = json.loads((model.path / "config.json").read_text())
    family = FUSION_FAMILY.get(cfg.get("model_type"), "bert")
    if cfg.get("model_type") not in FUSION_FAMILY:
        log.warning("no dedicated fusion rules for model_type %r; using the BERT rules", cfg.get("model_type"))
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(family)
    # DQ(int8 weight) → MatMul would become QOrderedMatMul, a CUDA-only op that CPU sessions reject.
    options.enable_qordered_matmul = False
    optimized = optimize_model(
        str(model.onnx_path),
        model_type=family,
        num_heads=cfg.get("num_attention_heads", 0),
        hidden_size=cfg.get("hidden_size", 0),
        opt_level=opt_level,
        use_gpu=False,
        optimization_options=options,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ONNXModel(out_dir)
    optimized.save_model_to_file(str(result.onnx_path))
    copy_sidecar_files(model.path, out_dir)
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return result, fusions
