"""`compress_weights`: weight-only quantization of an ONNX graph (INT4 / INT8 weights,
float activations), for decoder LMs whose decode step is bound by reading weights.

Two maintained backends:
- nncf: `nncf.compress_weights` on the onnx.ModelProto (RTN, or the data-aware AWQ /
  scale estimation on calibration text from the train split). NNCF keeps the embedding and
  the last MatMul (lm_head) in its backup precision, INT8 asymmetric per channel, and can
  mix 4- and 8-bit layers (ratio). Below opset 21 its 4-bit groups become ONNX Runtime's
  MatMulNBits; at opset 21 they are DequantizeLinear with int4 blocks.
- onnxruntime: `MatMulNBitsQuantizer` (RTN or HQQ): every MatMul with a constant weight,
  lm_head included, becomes MatMulNBits; the embedding (Gather) and Gemm layers (an encoder's
  pooler and classifier) stay float.

Opset 21 graphs from NNCF hold DequantizeLinear(int4 blocks) -> MatMul, which ONNX Runtime
fuses into MatMulNBits computing with int8 activations (its session option
session.qdq_matmulnbits_accuracy_level defaults to 4); NNCF's own MatMulNBits (opset < 21)
compute in float (accuracy level 0)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from compress.artifacts import Artifact, ONNXModel, copy_sidecar_files
from compress.errors import StageError
from compress.stages.base import StageConfig

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DATA_AWARE = ("awq", "scale_estimation")
METHODS = {"nncf": ("rtn", "awq", "scale_estimation"), "onnxruntime": ("rtn", "hqq")}
BLOCKWISE_DQ_OPSET = 21  # DequantizeLinear takes int4 and block_size from opset 21
PROTOBUF_LIMIT = 2_000_000_000  # a graph past this size must keep its weights in an external file


class CompressWeightsStage(StageConfig):
    kind: Literal["compress_weights"]
    backend: Literal["nncf", "onnxruntime"] = Field(
        "nncf", description="nncf: nncf.compress_weights (RTN, AWQ, scale estimation; embedding and lm_head "
        "kept INT8 asymmetric per channel, NNCF's default backup); onnxruntime: ONNX Runtime's "
        "MatMulNBitsQuantizer (RTN, HQQ; every MatMul, lm_head included; embedding and Gemm float).")
    bits: Literal[4, 8] = Field(4, description="Weight bits of the compressed layers.")
    symmetric: bool = Field(
        True, description="Symmetric (no zero point) or asymmetric (a zero point per group) weights.")
    group_size: int | None = Field(
        None, description="Weights per quantization group along the input dimension (a power of two, 16 or "
        "more), or -1 for one scale per output channel. Default: 128 (both libraries' default), but -1 for "
        "nncf at 8 bits (NNCF's INT8 is per channel only). Must divide every compressed layer's input size.")
    method: Literal["rtn", "awq", "scale_estimation", "gptq", "hqq"] = Field(
        "rtn", description="rtn: round to nearest (no data); awq, scale_estimation: NNCF's data-aware "
        "corrections on calibration_samples train rows; hqq: ONNX Runtime's half-quadratic quantization "
        "(no data). gptq is listed to be refused clearly: neither backend runs it on ONNX graphs here.")
    ratio: float | None = Field(
        None, gt=0, le=1, description="nncf, 4 bits: the share of the ratio-defining layers (all but the "
        "embedding and lm_head) in 4 bits, the rest in INT8 (default 1). Layers are ranked by NNCF's "
        "weight-quantization error (rtn) or activation variance (data-aware methods).")
    calibration_samples: int | None = Field(
        None, ge=1, le=100_000, description="awq / scale_estimation: train rows (one sequence each, truncated "
        "to data.max_length) that calibrate the correction (default 128, NNCF's subset size).")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="onnxruntime only: MatMulNBits' compute type for activations (0 unset, 1 fp32, "
        "2 fp16, 3 bf16, 4 int8: fastest on CPUs with VNNI, activations rounded to int8 per block).")
    quantize_embedding: bool = Field(
        False, description="onnxruntime, 4 bits, opset 21 graphs: the embedding (Gather) too, as "
        "GatherBlockQuantized with group_size blocks along the hidden size; a tied embedding is stored twice "
        "in the export (Gather and lm_head), so this halves what the vocabulary costs on disk.")

    accepts = (ONNXModel,)
    produces = ONNXModel

    @model_validator(mode="before")
    @classmethod
    def _no_all_layers(cls, data):
        if isinstance(data, dict) and "all_layers" in data:
            raise ValueError("all_layers is not offered: NNCF 3.4's ONNX backend writes a 4-bit embedding that ONNX "
                             "Runtime fails to run (its DequantizeLinear blocks run along the wrong axis), so the "
                             "embedding and lm_head stay INT8 (NNCF's default)")
        return data

    @model_validator(mode="after")
    def _supported_combination(self):
        reason = self.unsupported_reason()
        if reason:
            raise ValueError(reason)
        return self

    def unsupported_reason(self, opset: int | None = None) -> str | None:
        """Why this combination cannot run (a line that starts with the field), or None. With
        the graph's opset, also the combinations NNCF writes wrongly below opset 21."""
        g = self.group_size
        if g is not None and g != -1 and (g < 16 or g & (g - 1)):
            return f"group_size: {g} is not -1 or a power of two of 16 or more (ONNX Runtime's MatMulNBits blocks)"
        if self.method == "gptq":
            return ("method: gptq runs on neither backend here (NNCF 3.4's ONNX backend refuses it; ONNX Runtime's "
                    "GPTQ needs Intel Neural Compressor): use awq or scale_estimation (nncf)")
        if self.method not in METHODS[self.backend]:
            return (f"method: {self.method} is not a {self.backend} method (backend: {self.backend} offers "
                    f"{', '.join(METHODS[self.backend])})")
        if self.calibration_samples is not None and self.method not in DATA_AWARE:
            return f"calibration_samples applies to method: awq or scale_estimation (this stage is {self.method})"
        if self.backend == "nncf":
            return self._nncf_reason(opset)
        if self.ratio is not None:
            return "ratio applies to backend: nncf (onnxruntime compresses every MatMul in the same bits)"
        if self.quantize_embedding and (self.bits != 4 or self.method != "rtn"):
            return "quantize_embedding: ONNX Runtime quantizes an embedding with bits: 4 and method: rtn only"
        if self.quantize_embedding and opset is not None and opset < BLOCKWISE_DQ_OPSET:
            return (f"quantize_embedding needs the graph at opset {BLOCKWISE_DQ_OPSET} (int4 types; the graph is opset "
                    f"{opset}): export_onnx opset: {BLOCKWISE_DQ_OPSET}")
        if g == -1:
            return "group_size: -1 (per channel) is not offered by ONNX Runtime's MatMulNBits quantizer: use blocks"
        if self.method == "hqq" and self.bits == 8:
            return "bits: 8 with method: hqq writes MatMulNBits that ONNX Runtime 1.32 refuses to load: use rtn"
        if self.method == "hqq" and self.symmetric:
            return "symmetric: method: hqq always fits a zero point per block: set symmetric: false"
        return None

    def _nncf_reason(self, opset: int | None) -> str | None:
        if self.accuracy_level is not None:
            return "accuracy_level applies to backend: onnxruntime"
        if self.quantize_embedding:
            return "quantize_embedding applies to backend: onnxruntime (NNCF keeps the embedding INT8)"
        if self.bits == 8:
            if self.group_size not in (None, -1):
                return "group_size: NNCF's INT8 weights are per channel only (-1)"
            if self.ratio is not None:
                return "ratio applies to bits: 4 (NNCF's INT8 compresses every layer)"
            if self.method != "rtn":
                return f"method: {self.method} is 4-bit only in NNCF (bits: 8 takes rtn)"
            return None
        if opset is not None and opset < BLOCKWISE_DQ_OPSET:
            fix = f"export the graph at opset {BLOCKWISE_DQ_OPSET} (export_onnx opset: {BLOCKWISE_DQ_OPSET})"
            if self.group_size == -1:
                return (f"group_size: -1 at 4 bits needs int4 DequantizeLinear, opset {BLOCKWISE_DQ_OPSET}; the graph "
                        f"is opset {opset}: {fix} or use groups")
            if not self.symmetric:
                return (f"symmetric: false at 4 bits below opset {BLOCKWISE_DQ_OPSET}: NNCF 3.4 writes MatMulNBits zero "
                        f"points ONNX Runtime refuses (graph opset {opset}): {fix} or set symmetric: true")
        return None

    def check_in_recipe(self, index: int, stages: list) -> None:
        """The opset limits, against the graph an earlier export_onnx stage writes."""
        export = next((s for s in reversed(stages[:index]) if s.kind == "export_onnx"), None)
        opset = getattr(export, "opset", None)
        reason = self.unsupported_reason(opset) if isinstance(opset, int) else None
        if reason:
            raise ValueError(reason)

    @property
    def resolved_group_size(self) -> int:
        if self.group_size is not None:
            return self.group_size
        return -1 if self.backend == "nncf" and self.bits == 8 else 128

    def run(self, model: Artifact, ctx) -> ONNXModel:
        import onnx

        from compress.progress import spinner

        graph = onnx.load(str(model.onnx_path))
        reason = self.unsupported_reason(onnx_opset(graph))
        if reason:
            raise StageError(f"compress_weights: {reason}")
        check_group_size(graph, self.resolved_group_size, model.onnx_path)
        feeds = self._calibration(model, graph, ctx) if self.method in DATA_AWARE else None
        with spinner(f"compress_weights: {self.backend} {self.method} int{self.bits}, group {self.resolved_group_size}"):
            compressed = self._compress_nncf(graph, feeds) if self.backend == "nncf" else self._compress_ort(graph)
        result = ONNXModel(ctx.artifact_dir)
        save_onnx(compressed, result.onnx_path)
        copy_sidecar_files(model.path, ctx.artifact_dir)
        ctx.record(weight_compression={
            "backend": self.backend, "bits": self.bits, "group_size": self.resolved_group_size,
            "symmetric": self.symmetric, "method": self.method, "ratio": self.ratio,
            **compressed_layers(compressed)})
        return result

    def _calibration(self, model: ONNXModel, graph, ctx) -> list[dict[str, np.ndarray]]:
        from compress.models import load_tokenizer

        tokenizer = load_tokenizer(model.path, ctx.recipe.trust_remote_code)
        train = ctx.splits.train
        n = min(self.calibration_samples or 128, len(train))
        encoded = ctx.task.encode(tokenizer, train.subset(list(range(n))), ctx.recipe.data.max_length)
        inputs = graph_input_specs(graph)
        feeds = [empty_past_feed(e["input_ids"], inputs) for e in encoded if len(e["input_ids"])]
        ctx.record(calibration={"method": self.method, "samples": len(feeds), "source": "train split (first rows)"})
        return feeds

    def _compress_nncf(self, graph, feeds):
        os.environ.setdefault("NNCF_CI", "1")  # no telemetry: nothing beyond the package registries is reachable
        import nncf

        mode = getattr(nncf.CompressWeightsMode, f"INT{self.bits}_{'SYM' if self.symmetric else 'ASYM'}")
        options = {}
        if self.bits == 4:
            options = {"group_size": self.resolved_group_size, "ratio": self.ratio,
                       "awq": self.method == "awq" or None, "scale_estimation": self.method == "scale_estimation" or None}
        if feeds is not None:
            options.update(dataset=nncf.Dataset(feeds), subset_size=len(feeds))
        try:
            return nncf.compress_weights(graph, mode=mode, **options)
        except nncf.ParameterNotSupportedError as e:  # a combination NNCF refuses that the validation missed
            raise StageError(f"compress_weights: NNCF refused the settings: {str(e).splitlines()[0]}") from e

    def _compress_ort(self, graph):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        block = self.resolved_group_size
        if self.method == "hqq":
            config = HQQWeightOnlyQuantConfig(block_size=block, bits=self.bits)
        else:
            ops = ("MatMul", "Gather") if self.quantize_embedding else ("MatMul",)
            config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=self.symmetric, bits=self.bits,
                                                  accuracy_level=self.accuracy_level, op_types_to_quantize=ops)
        quantizer = MatMulNBitsQuantizer(graph, algo_config=config, accuracy_level=self.accuracy_level)
        quantizer.process()
        return quantizer.model.model


# ---------------------------------------------------------------------------- graph facts


def weight_matmuls(graph) -> list[tuple[str, str, tuple[int, ...]]]:
    """(node name, weight name, weight shape) of each MatMul whose second input is a 2-D
    initializer: the layers a weight compressor quantizes."""
    shapes = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    return [(n.name or n.output[0], n.input[1], shapes[n.input[1]]) for n in graph.graph.node
            if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2]


def onnx_opset(graph) -> int | None:
    """The graph's version of the default (ai.onnx) operator set."""
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)


def check_group_size(graph, group_size: int, path: Path) -> None:
    """Every compressed layer's input size (the weight's rows) must split into whole groups."""
    if group_size <= 0:
        return
    for node, weight, shape in weight_matmuls(graph):
        if shape[0] % group_size:
            raise StageError(f"compress_weights: group_size: {group_size} does not divide the input size {shape[0]} "
                             f"of layer {node} (weight {weight} {list(shape)}) in {path}")


def compressed_layers(graph) -> dict:
    """What the compressed graph holds: quantized op counts and weights per bit width."""
    from collections import Counter

    import onnx

    nodes = graph.graph.node
    ops = Counter(n.op_type for n in nodes if n.op_type in ("MatMulNBits", "DequantizeLinear", "GatherBlockQuantized"))
    bits = Counter()
    for n in nodes:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits[f"int{next((a.i for a in n.attribute if a.name == 'bits'), 4)}"] += 1
    int_types = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "int4", onnx.TensorProto.INT8: "int8",
                 onnx.TensorProto.UINT8: "int8"}
    dtypes = {t.name: t.data_type for t in graph.graph.initializer}
    for n in nodes:
        if n.op_type == "DequantizeLinear" and dtypes.get(n.input[0]) in int_types:
            bits[int_types[dtypes[n.input[0]]]] += 1
    return {"quantized_ops": dict(ops), "layers_by_bits": dict(sorted(bits.items())),
            "float_matmul_weights": len(weight_matmuls(graph))}


def save_onnx(graph, path: Path) -> None:
    """One file; past protobuf's 2 GB limit the weights go to `model.onnx.data` beside it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if graph.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(graph, str(path))
    else:
        onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")


# ---------------------------------------------------------------------------- calibration feed


def graph_input_specs(graph) -> dict[str, tuple[list, int]]:
    """The graph's real inputs: name -> (shape, with dim names or sizes; ONNX element type)."""
    initializers = {t.name for t in graph.graph.initializer}
    return {i.name: ([d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
                     i.type.tensor_type.elem_type)
            for i in graph.graph.input if i.name not in initializers}


def empty_past_feed(input_ids: list[int], inputs: dict[str, tuple[list, int]]) -> dict[str, np.ndarray]:
    """One sequence as a first-call feed of an exported decoder (optimum's
    text-generation-with-past): input_ids, an all-ones attention_mask, and position_ids and
    the empty past_key_values.* from compress.generation.first_call_feed. Encoder graphs take
    the same feed without past (token_type_ids zeros)."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    from compress.generation import FIRST_CALL_INPUTS, PAST_PREFIX, first_call_feed

    n = len(input_ids)
    mask = np.ones((1, n), dtype=np.int64)
    feed, decoder_inputs = {}, []
    for name, (shape, elem_type) in inputs.items():
        if name == "input_ids":
            feed[name] = np.asarray([input_ids], dtype=np.int64)
        elif name == "attention_mask":
            feed[name] = mask
        elif name == "token_type_ids":
            feed[name] = np.zeros((1, n), dtype=np.int64)
        elif name in FIRST_CALL_INPUTS or name.startswith(PAST_PREFIX):
            decoder_inputs.append((name, shape, tensor_dtype_to_np_dtype(elem_type)))
        else:
            raise StageError(f"compress_weights: cannot build a calibration feed for the graph input {name} "
                             f"{shape} (known: input_ids, attention_mask, token_type_ids, {', '.join(FIRST_CALL_INPUTS)}, "
                             f"{PAST_PREFIX}*)")
    try:
        feed.update(first_call_feed(decoder_inputs, mask))
    except ValueError as e:
        raise StageError(f"compress_weights: cannot build a calibration feed: {e}") from None
    return {name: feed[name] for name in inputs}  # in the graph's input order
