"""`qat`: quantization-aware training with NNCF, exported as an explicit Q/DQ ONNX model.

nncf.quantize inserts fake quantizers calibrated on train examples; the shared training
loop then fine-tunes through them on the `distillation` objective (labels, plus soft targets
from the float input model when soft_target_weight > 0);
nncf.strip turns the quantizers into torch's own fake-quantize ops, which the legacy ONNX
exporter writes as QuantizeLinear/DequantizeLinear pairs (ONNX Runtime runs them as INT8;
with the symmetric `performance` preset TensorRT takes them as explicit quantization)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from compress.artifacts import Artifact, ONNXModel, TorchModel
from compress.stages.base import (
    QATObjective,
    QuantizedParity,
    StageConfig,
    TrainingSchedule,
)


class QATStage(StageConfig, TrainingSchedule, QuantizedParity):
    kind: Literal["qat"]
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Lower than fine-tuning: the model is trained.")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="performance: symmetric INT8 everywhere (TensorRT-ready); "
        "mixed: asymmetric activations (ONNX Runtime only).")
    per_channel: bool = Field(True, description="Per-output-channel weight scales.")
    calibration_samples: int = Field(128, ge=1, le=100_000, description="Train examples for the initial ranges.")
    distillation: QATObjective = Field(
        QATObjective(), description="The training loss: labels, plus soft targets from the float input model "
                                    "when soft_target_weight > 0 (0: no teacher is loaded).")
    activation_type: Literal["int8", "uint8"] = Field(
        "int8", description="Activation Q/DQ in the ONNX file: int8 (TensorRT takes it) or uint8 with zero point "
        "+128 (exactly the same values; ONNX Runtime CPU's fast U8S8 kernels, not for TensorRT).")
    fold_weights: bool = Field(
        True, description="Store weights as their INT8 values feeding DequantizeLinear (a quarter of the file; "
        "the same outputs); false keeps float weights → QuantizeLinear → DequantizeLinear.")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset (13+: per-channel Q/DQ).")
    atol: float | None = Field(
        None, gt=0, description="A fixed max |logit difference| between the torch QAT model and ONNX, instead of "
        "the one derived from the exported graph's quantization steps (parity_steps).")
    parity_samples: int = Field(128, ge=1)
    max_metric_drop: float | None = Field(
        None, ge=0, le=1, validation_alias=AliasChoices("max_metric_drop", "max_accuracy_drop"),
        description="Fail when the ONNX model loses more of the run's metric than this against the input model "
        "on the budget slice (no layer search: that would retrain). The old name max_accuracy_drop is accepted.")
    budget_samples: int = Field(256, ge=8, le=100_000)

    accepts = (TorchModel,)
    produces = ONNXModel
    trains = True
    renamed = {"temperature": "distillation.temperature"}

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data):
        if isinstance(data, dict) and "distill_weight" in data:
            w = data["distill_weight"]
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            w, rest = (w, round(1 - w, 12)) if number else ("w", "1-w")
            raise ValueError(f"qat: distill_weight {w} is now distillation.soft_target_weight {w} with "
                             f"distillation.label_weight {rest}")
        return data

    @model_validator(mode="after")
    def _no_resume(self):
        if self.checkpoint_every is not None:
            raise ValueError("checkpoint_every is not supported by qat (NNCF's quantizer state is not resumable "
                             "here); remove it, a failed qat stage reruns from its start")
        return self

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.stages.qat.nncf_qat import run_qat

        return run_qat(self, model, ctx)
