"""`build_engine`: ONNX (fp32, or explicit Q/DQ INT8) → a serialized TensorRT engine,
checked against the ONNX model on eval inputs. Needs an NVIDIA GPU and the
`tensorrt` extra; elsewhere the stage is skipped with the reason."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.artifacts import Artifact, ONNXModel, TRTEngine
from compress.stages.base import QuantizedParity, StageConfig

FLOAT_ATOL = 0.05


class ProfileSpec(BaseModel):
    """One optimization profile: the engine accepts any shape between min and max and
    is tuned for opt."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(1, ge=1)
    max_batch: int = Field(32, ge=1)
    min_seq: int = Field(1, ge=1)
    opt_seq: int = Field(64, ge=1)
    max_seq: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ProfileSpec:
        for dim in ("batch", "seq"):
            lo, opt, hi = (getattr(self, f"{k}_{dim}") for k in ("min", "opt", "max"))
            if not lo <= opt <= hi:
                raise ValueError(f"need min_{dim} <= opt_{dim} <= max_{dim} (got {lo}, {opt}, {hi})")
        return self


class BuildEngineStage(StageConfig, QuantizedParity):
    kind: Literal["build_engine"]
    precision: Literal["fp32", "fp16", "int8", "best"] = Field(
        "fp16", description="int8 takes its scales from the graph's Q/DQ nodes (qat / static ptq)."
    )
    profiles: list[ProfileSpec] = Field(default_factory=lambda: [ProfileSpec()], min_length=1)
    workspace_mb: int = Field(4096, ge=64)
    timing_cache: str | None = Field(None, description="Timing cache file reused across builds.")
    atol: float | None = Field(None, gt=0, description=(
        "Max |logit difference| against the ONNX model. Default: 0.05 for a float graph; for a Q/DQ graph built "
        "as int8/best, parity_steps quantization steps read from the graph, with min_agreement (TensorRT fuses "
        "and reorders float work between the rounding points, as ORT's fusion does)."))
    parity_samples: int = Field(128, ge=1)
    required: bool = Field(
        False, description="Fail the run where TensorRT or a GPU is missing, instead of skipping the stage "
        "(for pipelines whose product is the engine).")

    accepts = (ONNXModel,)
    produces = TRTEngine

    def unavailable_reason(self) -> str | None:
        from compress.errors import StageError
        from compress.trt_engine import trt_unavailable_reason

        reason = trt_unavailable_reason()
        if reason and self.required:
            raise StageError(f"build_engine has required: true but cannot run here: {reason}")
        return reason

    def run(self, model: Artifact, ctx) -> TRTEngine:
        from compress.artifacts import copy_sidecar_files
        from compress.errors import StageError
        from compress.parity import check_parity
        from compress.resume import tree_sha256
        from compress.trt_engine import build_engine, check_qdq_for_tensorrt

        if self.precision in ("int8", "best"):
            problems = check_qdq_for_tensorrt(model.onnx_path)
            if problems:
                raise StageError(f"{model.onnx_path}: Q/DQ that TensorRT cannot take: {problems[0]} "
                                 f"({len(problems)} problems; quantize symmetrically)")
        metadata = build_engine(model.onnx_path, ctx.artifact_dir, self, {"onnx_sha256": tree_sha256(model.path)})
        copy_sidecar_files(model.path, ctx.artifact_dir)
        engine = TRTEngine(ctx.artifact_dir)
        ctx.record(engine=metadata)
        ctx.record(parity=check_parity(model, engine, ctx, samples=self.parity_samples, **self.parity_criterion(model)))
        return engine

    def parity_criterion(self, model: ONNXModel) -> dict:
        """The atol given, else the quantized criterion for an int8 build of a Q/DQ graph, else 0.05."""
        return self.criterion_for(model.onnx_path, self.atol, FLOAT_ATOL, "build_engine atol",
                                        keeps_quantization=self.precision in ("int8", "best"))
