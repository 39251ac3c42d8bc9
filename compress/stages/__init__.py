"""Stage configs. The discriminated union below is the only registry of stage kinds:
stage kind = module = class (`export_onnx` ↔ stages/export_onnx.py ↔ ExportONNXStage)."""

from typing import Annotated, Union

from pydantic import Field

from compress.stages.base import StageConfig
from compress.stages.build_engine import BuildEngineStage
from compress.stages.distill import DistillStage
from compress.stages.export_onnx import ExportONNXStage
from compress.stages.finetune import FinetuneStage
from compress.stages.optimize_onnx import OptimizeONNXStage
from compress.stages.package import PackageStage
from compress.stages.prune import PruneStage
from compress.stages.ptq import PTQStage
from compress.stages.qat import QATStage

STAGE_CLASSES: tuple[type[StageConfig], ...] = (
    FinetuneStage, ExportONNXStage, OptimizeONNXStage, PTQStage, QATStage, BuildEngineStage, PackageStage,
    DistillStage, PruneStage,
)

Stage = Annotated[Union[STAGE_CLASSES], Field(discriminator="kind")]  # noqa: UP007

STAGE_KINDS: tuple[str, ...] = tuple(cls.model_fields["kind"].annotation.__args__[0] for cls in STAGE_CLASSES)

__all__ = ["STAGE_CLASSES", "STAGE_KINDS", "BuildEngineStage", "DistillStage", "ExportONNXStage", "FinetuneStage",
           "OptimizeONNXStage", "PTQStage", "PackageStage", "PruneStage", "QATStage", "Stage", "StageConfig"]
