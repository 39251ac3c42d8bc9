"""`ptq`: post-training INT8 quantization of an ONNX model with ONNX Runtime
(dynamic: weights INT8 offline, activations quantized per batch at run time)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel
from compress.stages.base import StageConfig


class PTQStage(StageConfig):
    kind: Literal["ptq"]
    mode: Literal["dynamic"] = Field("dynamic", description="Calibrated static Q/DQ arrives with the quantization work.")
    per_channel: bool = Field(False, description="Per-output-channel weight scales.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")
    op_types: list[str] | None = Field(
        None, description="Operator types to quantize (default: MatMul, Attention, Gather).", min_length=1
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.onnx_quantize import quantize_dynamic_int8

        quantized, coverage = quantize_dynamic_int8(model, ctx.artifact_dir, self)
        ctx.record(int8_coverage=coverage)
        return quantized
