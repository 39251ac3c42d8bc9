"""`ptq`: post-training INT8 quantization of an ONNX model with ONNX Runtime.

dynamic: weights INT8 offline, activations quantized per batch at run time.
static: QuantizeLinear/DequantizeLinear pairs with activation ranges calibrated on
train examples (MinMax, Entropy or Percentile); symmetric INT8, so TensorRT can take it.
With max_metric_drop, the most sensitive layers are kept in float until the budget holds."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from compress.artifacts import Artifact, ONNXModel
from compress.stages.base import StageConfig

STATIC_ONLY = ("calibration", "calibration_samples", "percentile")  # None unless set


class PTQStage(StageConfig):
    kind: Literal["ptq"]
    mode: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: activations quantized at run time; static: calibrated Q/DQ graph.")
    calibration: Literal["MinMax", "Entropy", "Percentile"] | None = Field(
        None, description="Static only: how activation ranges are calibrated (default MinMax).")
    calibration_samples: int | None = Field(
        None, ge=1, le=100_000, description="Static only: train examples run for calibration (default 128).")
    percentile: float | None = Field(
        None, gt=90, le=100, description="Percentile calibration only: the range covers this percentile (99.999).")
    activation_type: Literal["int8", "uint8"] = Field(
        "int8", description="Static: int8 = symmetric (zero point 0), what TensorRT takes; uint8 = asymmetric, "
        "ONNX Runtime CPU's fast U8S8 kernels (much faster on CPUs without VNNI), not for TensorRT.")
    per_channel: bool = Field(False, description="Per-output-channel weight scales.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")
    op_types: list[str] | None = Field(
        None, min_length=1,
        description="Operator types to quantize (default dynamic: MatMul, Attention, Gather; static: MatMul, Gemm).")
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="Node names kept in float; a name with * or ? is a pattern over the "
        "graph's node names (e.g. '*/mlp/down_proj/*': a decoder's outlier-heavy FFN outputs).")
    activation_matmuls: bool = Field(
        False, description="Also quantize MatMuls whose both inputs are activations (attention's QK^T and "
        "softmax x V in a graph without fused Attention: optimize_onnx fuse_attention: false, or no optimize_onnx). "
        "Faster at large batches on CPU (more INT8 work), slower at batch 1 than ORT's fused float attention.")
    max_metric_drop: float | None = Field(
        None, ge=0, le=1, validation_alias=AliasChoices("max_metric_drop", "max_accuracy_drop"),
        description="Largest loss of the run's metric allowed (absolute, 0.01 = 1 point) against the input model; "
        "beyond it the most sensitive layers stay float. The old name max_accuracy_drop is accepted.")
    budget_samples: int = Field(
        256, ge=8, le=100_000, description="Eval examples the accuracy budget and layer sensitivity are measured on.")

    accepts = (ONNXModel,)
    produces = ONNXModel

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data):
        if isinstance(data, dict) and "exclude_nodes" in data:
            raise ValueError("exclude_nodes is now nodes_to_exclude (ONNX Runtime's name for it)")
        return data

    @model_validator(mode="after")
    def _static_fields_need_static(self):
        if self.mode == "dynamic":
            given = [f for f in STATIC_ONLY if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{given[0]} applies to mode: static only (this ptq stage is mode: dynamic)")
        if self.percentile is not None and self.calibration != "Percentile":
            raise ValueError("percentile applies to calibration: Percentile only")
        return self

    @property
    def calibration_method(self) -> str:
        return self.calibration or "MinMax"

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.onnx_graph import count_int8_coverage

        quantize, cleanup, graph = self._quantizer(model, ctx)
        try:
            excluded = excluded_nodes(graph, self.nodes_to_exclude)
            if excluded != list(self.nodes_to_exclude):
                ctx.record(nodes_excluded=excluded)
            if self.max_metric_drop is None:
                quantized = quantize(ctx.artifact_dir, excluded, None)
            else:
                quantized = self._fit_budget(model, ctx, quantize, graph, excluded)
        finally:
            cleanup()
        ctx.record(int8_coverage=count_int8_coverage(quantized.onnx_path))
        return quantized

    def _quantizer(self, model: ONNXModel, ctx):
        """(quantize(out_dir, nodes_to_exclude, nodes_to_quantize) -> ONNXModel, cleanup, the graph
        whose node names the quantizer sees)."""
        from compress.stages.ptq.ort_quantize import (
            StaticQuantizer,
            calibration_feeds,
            quantize_dynamic_int8,
        )

        if self.mode == "dynamic":
            quantize = lambda out, exclude, only: quantize_dynamic_int8(model, out, self, exclude, only)  # noqa: E731
            return quantize, lambda: None, model.onnx_path
        from compress.models import load_tokenizer
        from compress.onnx_graph import graph_inputs

        tokenizer = load_tokenizer(model.path, ctx.recipe.trust_remote_code)
        train = ctx.splits.train
        n = min(self.calibration_samples or 128, len(train))
        encoded = ctx.task.encode(tokenizer, train.subset(list(range(n))), ctx.recipe.data.max_length)
        input_names = graph_inputs(model.onnx_path)
        feeds = calibration_feeds(encoded, input_names, tokenizer.pad_token_id or 0)
        ctx.record(calibration={"method": self.calibration_method, "samples": n, "source": "train split (first rows)",
                                "percentile": (self.percentile or 99.999) if self.calibration == "Percentile" else None})
        static = StaticQuantizer(model, self, feeds)
        return static.quantize, static.cleanup, static.prepared

    def _fit_budget(self, model: ONNXModel, ctx, quantize, graph, pinned: list[str]) -> ONNXModel:
        """Quantize within max_metric_drop on a slice of the eval split, keeping the most
        sensitive layers in float if needed; the final model is written to the stage directory."""
        import shutil
        import tempfile
        from pathlib import Path

        import numpy as np

        from compress.evaluate import predict_outputs
        from compress.sessions import ORTSession
        from compress.stages.ptq.budget import fit_accuracy_budget, task_score
        from compress.stages.ptq.ort_quantize import (
            STATIC_DEFAULT_OP_TYPES,
            matrix_node_names,
        )

        threads, batch = ctx.measure.threads, ctx.measure.eval_batch_size
        encoded, references = ctx.eval_set.head(model, self.budget_samples)
        score = task_score(ctx.task, encoded, references, ctx.metric)
        reference = predict_outputs(ORTSession(model, threads), encoded, batch, "budget (float)")
        scratch = Path(tempfile.mkdtemp(prefix="compress-budget-"))

        def logits_with(exclude: list[str], only: list[str] | None) -> list[np.ndarray]:
            candidate = quantize(scratch / "candidate", exclude, only)
            logits = predict_outputs(ORTSession(candidate, threads), encoded, batch, "budget (int8)")
            shutil.rmtree(scratch / "candidate", ignore_errors=True)
            return logits

        try:
            default_ops = STATIC_DEFAULT_OP_TYPES if self.mode == "static" else None  # static never quantizes Attention
            candidates = matrix_node_names(graph, self.op_types or default_ops)
            result = fit_accuracy_budget(logits_with, reference, score, candidates,
                                         pinned, self.max_metric_drop)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        ctx.record(accuracy_budget={"metric": ctx.metric, **result.record(
            score(reference), self.max_metric_drop, len(references), pinned)})
        return quantize(ctx.artifact_dir, result.excluded, None)


def excluded_nodes(onnx_path, names: list[str]) -> list[str]:
    """nodes_to_exclude with its patterns (names holding * or ?) expanded over the graph's
    node names, in graph order; StageError for a name or pattern that matches nothing (ONNX
    Runtime would ignore it, and the node meant would be quantized without a word)."""
    from fnmatch import fnmatchcase

    import onnx

    from compress.errors import StageError

    if not names:
        return []
    nodes = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.name]
    out: list[str] = []
    for name in names:
        if not any(ch in name for ch in "*?"):
            if name not in nodes:
                raise StageError(f"ptq nodes_to_exclude: {name!r} is not a node of {onnx_path} (names change with "
                                 "optimize_onnx's fusions; a pattern such as '*/output/dense/*' survives them)")
            out.append(name)
            continue
        matched = [n for n in nodes if fnmatchcase(n, name)]
        if not matched:
            raise StageError(f"ptq nodes_to_exclude: {name!r} matches no node of {onnx_path}")
        out += [n for n in matched if n not in out]
    return out
