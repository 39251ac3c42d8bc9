"""`optimize_onnx`: ONNX Runtime transformer graph fusion (Attention, SkipLayerNorm,
EmbedLayerNorm, BiasGelu), checked against the incoming graph on real inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel
from compress.stages.base import StageConfig


FLOAT_ATOL = 1e-3
# Fusing a quantized graph reorders float work between its rounding points: on the
# headline's QAT MPNet the logits moved by up to 0.04 with every label unchanged.
QUANTIZED_ATOL = 0.1


class OptimizeONNXStage(StageConfig):
    kind: Literal["optimize_onnx"]
    opt_level: Literal[0, 1, 2, 99] = Field(
        0,
        description="0: portable fusions only; 1/2/99 also bake ONNX Runtime's own graph optimizations "
        "into the file (tied to the ORT version and CPU).",
    )
    atol: float | None = Field(None, gt=0, description=(
        "Max |logit difference| allowed against the incoming graph (default: 1e-3 for a float graph, "
        "0.1 for a quantized one, where fusion moves rounding points)."))
    parity_samples: int = Field(128, ge=1)

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.deploy import onnx_precision
        from compress.onnx_optimize import optimize_onnx
        from compress.parity import check_parity

        atol = self.atol or (QUANTIZED_ATOL if onnx_precision(model.onnx_path).startswith("int8") else FLOAT_ATOL)
        optimized, fusions = optimize_onnx(model, ctx.artifact_dir, opt_level=self.opt_level)
        ctx.record(fused_ops=fusions)
        ctx.record(parity=check_parity(model, optimized, ctx, atol=atol, samples=self.parity_samples))
        return optimized
