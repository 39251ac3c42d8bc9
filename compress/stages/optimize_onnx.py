"""`optimize_onnx`: ONNX Runtime transformer graph fusion (Attention, SkipLayerNorm,
EmbedLayerNorm, BiasGelu), checked against the incoming graph on real inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel, copy_sidecar_files
from compress.stages.base import QuantizedParity, StageConfig

log = logging.getLogger(__name__)


FLOAT_ATOL = 1e-3


class OptimizeONNXStage(StageConfig, QuantizedParity):
    kind: Literal["optimize_onnx"]
    opt_level: Literal[0, 1, 2, 99] = Field(
        0,
        description="0: portable fusions only; 1/2/99 also bake ONNX Runtime's own graph optimizations "
        "into the file (tied to the ORT version and CPU).",
    )
    atol: float | None = Field(None, gt=0, description=(
        "Max |logit difference| allowed against the incoming graph (default: 1e-3 for a float graph; for a "
        "quantized one, where fusion moves float work between rounding points, parity_steps quantization steps "
        "read from the graph, with min_agreement)."))
    parity_samples: int = Field(128, ge=1)

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.onnx_graph import onnx_precision
        from compress.parity import check_parity, quantized_criterion

        if self.atol is not None:
            criterion = {"atol": self.atol}
        elif onnx_precision(model.onnx_path).startswith("int8"):
            criterion = quantized_criterion(model.onnx_path, self.parity_steps, self.min_agreement,
                                            "optimize_onnx atol")
        else:
            criterion = {"atol": FLOAT_ATOL}
        optimized, fusions = optimize_onnx(model, ctx.artifact_dir, opt_level=self.opt_level)
        ctx.record(fused_ops=fusions)
        ctx.record(parity=check_parity(model, optimized, ctx, samples=self.parity_samples, **criterion))
        return optimized


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
