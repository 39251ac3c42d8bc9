"""`export_onnx`: torch → ONNX (legacy exporter, dynamic batch and sequence axes),
then a parity check against the torch model on real eval inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel, TorchModel
from compress.stages.base import StageConfig


class ExportONNXStage(StageConfig):
    kind: Literal["export_onnx"]
    opset: int = Field(18, ge=14, le=21)
    atol: float = Field(1e-4, gt=0, description="Max |logit difference| allowed between torch and ONNX.")
    parity_samples: int = Field(128, ge=1, description="Eval examples used for the parity check.")

    accepts = (TorchModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.onnx_export import export_to_onnx
        from compress.parity import check_parity

        exported = export_to_onnx(model, ctx.artifact_dir, opset=self.opset)
        ctx.record(parity=check_parity(model, exported, ctx, atol=self.atol, samples=self.parity_samples))
        return exported
