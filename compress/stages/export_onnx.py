"""`export_onnx`: torch → ONNX through optimum's exporter (the legacy TorchScript-based
torch.onnx path, which ONNX Runtime's fusions and NNCF's Q/DQ export both need), with
dynamic batch and sequence axes, then a parity check against the torch model on real
eval inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel, TorchModel
from compress.errors import StageError
from compress.stages.base import StageConfig

log = logging.getLogger(__name__)


class ExportONNXStage(StageConfig):
    kind: Literal["export_onnx"]
    opset: int = Field(18, ge=14, le=21)
    atol: float = Field(1e-4, gt=0, description="Max |logit difference| allowed between torch and ONNX.")
    parity_samples: int = Field(128, ge=1, description="Eval examples used for the parity check.")

    accepts = (TorchModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.parity import check_parity

        exported = export_to_onnx(model, ctx.artifact_dir, opset=self.opset, task=ctx.task.optimum_task)
        ctx.record(parity=check_parity(model, exported, ctx, atol=self.atol, samples=self.parity_samples))
        return exported


def export_to_onnx(model: TorchModel, out_dir: Path, opset: int | None, task: str = "text-classification") -> ONNXModel:
    """task: optimum's exporter task name (the Task's optimum_task)."""
    from compress.models import needs_compress_loader
    from compress.progress import spinner

    # structurally pruned shapes that from_pretrained cannot build or run: compress.models can
    export = _export_loaded if needs_compress_loader(model.path) else _export_from_directory
    try:
        # optimum reports no progress while it traces and writes: a spinner says the step is alive
        with spinner(f"export_onnx: exporting {model.path.name} (opset {opset})"):
            export(model, out_dir, opset, task)
    except Exception as e:  # noqa: BLE001 - surface the exporter's reason in one line
        raise StageError(f"ONNX export of {model.path} failed: {type(e).__name__}: {e}") from e
    exported = ONNXModel(out_dir)
    if not exported.onnx_path.is_file():
        raise StageError(f"ONNX export wrote no {exported.onnx_path.name} into {out_dir}")
    return exported


def _export_from_directory(model: TorchModel, out_dir: Path, opset: int | None, task: str) -> None:
    from optimum.exporters.onnx import main_export

    main_export(
        str(model.path),
        output=str(out_dir),
        task=task,
        opset=opset,
        device="cpu",
        do_validation=False,  # parity is checked on real eval inputs by the stage
        no_post_process=True,
        local_files_only=True,
    )


def _export_loaded(model: TorchModel, out_dir: Path, opset: int | None, task: str) -> None:
    """Export a model that compress.models loads (e.g. structurally pruned) through optimum's
    exporter for an in-memory model: the same legacy ONNX path as main_export."""
    from optimum.exporters.onnx import onnx_export_from_model

    from compress.models import load_model, load_tokenizer

    onnx_export_from_model(load_model(model.path), output=str(out_dir), opset=opset,
                           task=task, do_validation=False, no_post_process=True,
                           preprocessors=[load_tokenizer(model.path)])
