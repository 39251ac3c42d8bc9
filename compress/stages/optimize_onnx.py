"""`optimize_onnx`: ONNX Runtime transformer graph fusion (Attention, SkipLayerNorm,
EmbedLayerNorm, BiasGelu), checked against the incoming graph on real inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel
from compress.stages.base import StageConfig


class OptimizeONNXStage(StageConfig):
    kind: Literal["optimize_onnx"]
    opt_level: Literal[0, 1, 2, 99] = Field(
        0,
        description="0: portable fusions only; 1/2/99 also bake ONNX Runtime's own graph optimizations "
        "into the file (tied to the ORT version and CPU).",
    )
    atol: float = Field(1e-3, gt=0, description="Max |logit difference| allowed against the incoming graph.")
    parity_samples: int = Field(128, ge=1)

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.onnx_optimize import optimize_onnx
        from compress.parity import check_parity

        optimized, fusions = optimize_onnx(model, ctx.artifact_dir, opt_level=self.opt_level)
        ctx.record(fused_ops=fusions)
        ctx.record(parity=check_parity(model, optimized, ctx, atol=self.atol, samples=self.parity_samples))
        return optimized
