"""torch checkpoint → ONNX through optimum's exporter (the legacy TorchScript-based
torch.onnx path, which ONNX Runtime's fusions and NNCF's Q/DQ export both need)."""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifacts import ONNXModel, TorchModel
from compress.errors import StageError

log = logging.getLogger(__name__)

TASK_TO_OPTIMUM = {"text-classification": "text-classification"}


def export_to_onnx(model: TorchModel, out_dir: Path, opset: int | None, task: str = "text-classification") -> ONNXModel:
    from compress.models import ffn_widths_of

    # per-layer FFN widths (structured pruning): from_pretrained cannot build it, compress.models can
    export = _export_loaded if ffn_widths_of(model.path) else _export_from_directory
    try:
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
        task=TASK_TO_OPTIMUM[task],
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

    from compress.models import load_classifier, load_tokenizer

    onnx_export_from_model(load_classifier(model.path), output=str(out_dir), opset=opset,
                           task=TASK_TO_OPTIMUM[task], do_validation=False, no_post_process=True,
                           preprocessors=[load_tokenizer(model.path)])
