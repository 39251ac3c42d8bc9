"""Stage configs. The discriminated union below is the only registry of stage kinds:
stage kind = module = class (`export_onnx` ↔ stages/export_onnx.py ↔ ExportONNXStage), plus
the stage kinds installed plugins add through the `compress.stages` entry points
(compress.plugins): a StageConfig subclass whose `kind` is the entry point's name."""

from typing import Annotated, Union

from pydantic import Field

from compress.stages.base import StageConfig
from compress.stages.build_engine import BuildEngineStage
from compress.stages.compress_weights import CompressWeightsStage
from compress.stages.distill import DistillStage
from compress.stages.export_onnx import ExportONNXStage
from compress.stages.finetune import FinetuneStage
from compress.stages.optimize_onnx import OptimizeONNXStage
from compress.stages.package import PackageStage
from compress.stages.prune import PruneStage
from compress.stages.prune_vocabulary import PruneVocabularyStage
from compress.stages.ptq import PTQStage
from compress.stages.qat import QATStage

BUILTIN_STAGE_CLASSES: tuple[type[StageConfig], ...] = (
    FinetuneStage, ExportONNXStage, OptimizeONNXStage, PTQStage, QATStage, BuildEngineStage, PackageStage,
    DistillStage, PruneStage, PruneVocabularyStage, CompressWeightsStage,
)


def kind_of(cls: type[StageConfig]) -> str | None:
    """The stage kind a config class declares (`kind: Literal["<kind>"]`), or None."""
    field = cls.model_fields.get("kind")
    args = getattr(field.annotation, "__args__", ()) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def plugin_stage_classes() -> tuple[type[StageConfig], ...]:
    """The stage kinds of the installed `compress.stages` plugins, checked against the contract."""
    from compress.plugins import (
        STAGE_GROUP,
        PluginError,
        describe,
        load_plugin,
        plugin_entry_points,
    )

    builtin = {kind_of(cls) for cls in BUILTIN_STAGE_CLASSES}
    classes = []
    for ep in plugin_entry_points(STAGE_GROUP):
        cls = load_plugin(ep)
        if not (isinstance(cls, type) and issubclass(cls, StageConfig)):
            raise PluginError(f"plugin {describe(ep)}: not a StageConfig subclass (see CONTRIBUTING.md, "
                              "'The stage contract')")
        if kind_of(cls) != ep.name:
            raise PluginError(f"plugin {describe(ep)}: its kind field must be Literal[{ep.name!r}], "
                              f"found {kind_of(cls)!r}")
        if ep.name in builtin:
            raise PluginError(f"plugin {describe(ep)}: '{ep.name}' is a built-in stage kind")
        classes.append(cls)
    return tuple(classes)


STAGE_CLASSES: tuple[type[StageConfig], ...] = (*BUILTIN_STAGE_CLASSES, *plugin_stage_classes())

Stage = Annotated[Union[STAGE_CLASSES], Field(discriminator="kind")]  # noqa: UP007

STAGE_KINDS: tuple[str, ...] = tuple(kind_of(cls) for cls in STAGE_CLASSES)

__all__ = ["BUILTIN_STAGE_CLASSES", "STAGE_CLASSES", "STAGE_KINDS", "BuildEngineStage", "CompressWeightsStage",
           "DistillStage", "ExportONNXStage", "FinetuneStage", "OptimizeONNXStage", "PTQStage", "PackageStage",
           "PruneStage", "PruneVocabularyStage", "QATStage", "Stage", "StageConfig"]
