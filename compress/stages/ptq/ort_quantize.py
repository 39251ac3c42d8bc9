"""INT8 quantization of ONNX models with onnxruntime.quantization (dynamic, or static
Q/DQ with calibration), and a count of how much of the graph's matrix work runs in INT8."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.artifacts import ONNXModel, copy_sidecar_files
from compress.onnx_graph import FLOAT_MATRIX_OPS

if TYPE_CHECKING:
    from compress.stages.ptq import PTQStage

log = logging.getLogger(__name__)

STATIC_DEFAULT_OP_TYPES = ["MatMul", "Gemm"]  # the matrix work; other ops would only add Q/DQ round trips


def matrix_node_names(onnx_path: Path, op_types: list[str] | None) -> list[str]:
    """Names of the nodes a quantizer would consider, in graph order (sensitivity candidates)."""
    import onnx

    wanted = set(op_types or FLOAT_MATRIX_OPS) & FLOAT_MATRIX_OPS
    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type in wanted and n.name and not _is_onnx_attention(n)]


def _is_onnx_attention(node) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx")


def with_onnx_attention_excluded(onnx_path: Path, nodes_to_exclude: list[str]) -> list[str]:
    """nodes_to_exclude plus ONNX's own Attention nodes (opset 23: a decoder's fused attention
    with its KV cache). onnxruntime.quantization takes every node called Attention for its
    com.microsoft op and would write a QAttention that cannot hold the cache."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    extra = [n.name for n in nodes if _is_onnx_attention(n) and n.name not in nodes_to_exclude]
    return [*nodes_to_exclude, *extra]


# ---------------------------------------------------------------------------- dynamic


def quantize_dynamic_int8(model: ONNXModel, out_dir: Path, stage: PTQStage, nodes_to_exclude: list[str],
                          nodes_to_quantize: list[str] | None = None) -> ONNXModel:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    result = ONNXModel(out_dir)
    quantize_dynamic(
        model.onnx_path,
        result.onnx_path,
        op_types_to_quantize=stage.op_types,
        per_channel=stage.per_channel,
        reduce_range=stage.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes_to_quantize,
        nodes_to_exclude=with_onnx_attention_excluded(model.onnx_path, nodes_to_exclude) or None,
        extra_options={
            # Fused graphs carry contrib ops whose output types the quantizer cannot infer.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # quantize_dynamic's own default (True) leaves activation x activation MatMuls in float
            "MatMulConstBOnly": not stage.activation_matmuls,
        },
    )
    copy_sidecar_files(model.path, out_dir)
    return result


# ---------------------------------------------------------------------------- static (Q/DQ)


class FeedReader:
    """onnxruntime.quantization CalibrationDataReader over prepared input feeds. on_batch_done()
    is called once per feed the calibrator has run (a progress bar's advance)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], on_batch_done: Callable[[], None] | None = None):
        self.feeds, self.position, self.on_batch_done = feeds, 0, on_batch_done
        self.reported = 0  # feeds counted as done

    def get_next(self) -> dict | None:
        # The calibrator asks for the next feed once it has run the one before: count that one
        # here, so the last is counted by the request that finds the feeds exhausted.
        if self.on_batch_done and self.reported < self.position:
            self.reported = self.position
            self.on_batch_done()
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def rewind(self) -> None:
        self.position = self.reported = 0


def calibration_feeds(encoded: list[dict], input_names: list[str], pad_id: int) -> list[dict[str, np.ndarray]]:
    """One batch per example, all padded to the longest: histogram calibrators (Entropy,
    Percentile) stack every run's tensors, which needs equal shapes."""
    from compress.data import pad_batch

    width = max(len(e["input_ids"]) for e in encoded)
    feeds = []
    for e in encoded:
        batch = pad_batch([e], input_names, pad_id)
        padded = {}
        for name, arr in batch.items():
            fill = pad_id if name == "input_ids" else 0
            padded[name] = np.pad(arr, ((0, 0), (0, width - arr.shape[1])), constant_values=fill)
        feeds.append(padded)
    return feeds


@dataclass
class StaticQuantizer:
    """Static Q/DQ quantization of one float graph, calibrated once: the calibration ranges
    are cached in a file, so the accuracy-budget search can re-quantize with other node
    exclusions without running the calibration again."""

    model: ONNXModel
    stage: PTQStage
    feeds: list[dict[str, np.ndarray]]
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="compress-ptq-")))

    def __post_init__(self):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from compress.progress import spinner

        self.prepared = self.workdir / "prepared.onnx"
        self.cache = self.workdir / "calibration.json"
        # The calibrator only sees tensors with a known float type: fused contrib ops (Attention,
        # SkipLayerNorm) need ORT's symbolic shape inference; graphs it cannot handle fall back
        # to plain ONNX shape inference.
        with spinner("ptq: shape inference before calibration"):
            try:
                quant_pre_process(str(self.model.onnx_path), str(self.prepared), auto_merge=True)
            except Exception as e:  # noqa: BLE001 - any failure here has a working fallback
                log.info("symbolic shape inference failed (%s); using ONNX shape inference", e)
                quant_pre_process(str(self.model.onnx_path), str(self.prepared), skip_symbolic_shape=True)

    def quantize(self, out_dir: Path, nodes_to_exclude: list[str],
                 nodes_to_quantize: list[str] | None = None) -> ONNXModel:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        from compress.progress import progress_bar

        stage = self.stage
        out_dir.mkdir(parents=True, exist_ok=True)
        result = ONNXModel(out_dir)
        # Only the first call calibrates (later ones, the budget search's, read the cached
        # ranges and never ask the reader): a bar there would stand still at 0.
        calibrating = not self.cache.is_file()
        with progress_bar("ptq: calibration", total=len(self.feeds)) if calibrating else nullcontext() as bar:
            quantize_static(
                str(self.prepared),
                str(result.onnx_path),
                calibration_data_reader=FeedReader(self.feeds, bar.advance if bar else None),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=stage.op_types or STATIC_DEFAULT_OP_TYPES,
                per_channel=stage.per_channel,
                reduce_range=stage.reduce_range,
                activation_type=QuantType.QUInt8 if stage.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes_to_quantize,
                nodes_to_exclude=with_onnx_attention_excluded(self.prepared, nodes_to_exclude) or None,
                calibrate_method=getattr(CalibrationMethod, stage.calibration_method),
                calibration_cache_path=str(self.cache),
                extra_options={
                    # int8: zero points 0, what TensorRT's explicit quantization takes
                    "ActivationSymmetric": stage.activation_type == "int8",
                    "WeightSymmetric": True,
                    # int32 bias quantization breaks on initializers shared between nodes (the exporter
                    # dedupes equal tensors); TensorRT and ORT's Q/DQ fusions take float biases.
                    "QuantizeBias": False,
                    "CalibPercentile": stage.percentile or 99.999,
                    "DefaultTensorType": 1,  # onnx.TensorProto.FLOAT, for contrib ops without type info
                    "MatMulConstBOnly": not stage.activation_matmuls,
                },
            )
        copy_sidecar_files(self.model.path, out_dir)
        return result

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)
