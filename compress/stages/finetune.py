"""`finetune`: train the task head and the encoder on the train split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, TorchModel
from compress.stages.base import StageConfig


class FinetuneStage(StageConfig):
    kind: Literal["finetune"]
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the train split (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=65536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int | None = Field(None, description="Training seed; defaults to data.seed.")

    trains = True

    def run(self, model: Artifact, ctx) -> TorchModel:
        from compress.training import finetune_classifier

        return finetune_classifier(model, self, ctx)
