"""TensorRT engines: optimization profiles from the recipe, the build through
TensorRT's Python API, engine metadata (an engine only runs on the GPU model and
TensorRT version it was built with), the inspector's layer-precision report, and
the Q/DQ checks TensorRT's explicit quantization needs.

Everything that touches `tensorrt` imports it lazily: the module imports and its
pure functions run on machines without a GPU."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError, StageError

if TYPE_CHECKING:
    from compress.stages.build_engine import BuildEngineStage

log = logging.getLogger(__name__)

SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


# ---------------------------------------------------------------------------- availability


def trt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None if it can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or a broken install that fails to load its libraries
        return f"tensorrt is not importable ({type(e).__name__}: {e}); install the 'tensorrt' extra on a machine with an NVIDIA GPU"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    except ImportError:
        pass
    return None


# ---------------------------------------------------------------------------- profiles


def profile_shapes(profile, input_names: list[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """(min, opt, max) shapes per engine input for one optimization profile. Every
    encoder input is [batch, sequence]."""
    shapes = {}
    for name in input_names:
        if name not in SEQUENCE_INPUTS:
            raise CompressError(f"engine input {name!r} is not a [batch, sequence] input; cannot derive its profile")
        shapes[name] = (
            (profile.min_batch, profile.min_seq),
            (profile.opt_batch, profile.opt_seq),
            (profile.max_batch, profile.max_seq),
        )
    return shapes


# ---------------------------------------------------------------------------- inspector report

_PRECISION_PATTERNS = [
    ("int8", re.compile(r"\bint8\b", re.I)),
    ("fp8", re.compile(r"\bfp8\b", re.I)),
    ("fp16", re.compile(r"\b(fp16|half)\b", re.I)),
    ("bf16", re.compile(r"\bbf16\b", re.I)),
    ("fp32", re.compile(r"\b(fp32|float)\b", re.I)),
    ("int32", re.compile(r"\bint32\b", re.I)),
    ("int64", re.compile(r"\bint64\b", re.I)),
    ("bool", re.compile(r"\bbool\b", re.I)),
]
_BOOKKEEPING = {"Reformat", "NoOp", "Shuffle", "Constant", "Identity"}


def tensor_precision(format_datatype: str) -> str | None:
    for name, pattern in _PRECISION_PATTERNS:
        if pattern.search(format_datatype):
            return name
    return None


def layer_precision(layer: dict) -> str:
    """A layer's compute precision: the lowest float precision among its inputs
    (an INT8 GEMM reads INT8 and may write FP16/FP32)."""
    found = {tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", [])}
    found |= {tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Outputs", [])} if not found - {None} else set()
    for precision in ("int8", "fp8", "fp16", "bf16", "fp32", "int32", "int64", "bool"):
        if precision in found:
            return precision
    return "unknown"


def summarize_layer_precisions(engine_information: str | dict) -> dict:
    """Count compute layers per precision in an engine inspector JSON report
    (built with ProfilingVerbosity.DETAILED and an execution context with shapes set)."""
    info = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = info.get("Layers", [])
    if layers and isinstance(layers[0], str):
        raise CompressError("the inspector report has layer names only: build with profiling verbosity DETAILED")
    counts: Counter = Counter()
    by_type: dict[str, Counter] = {}
    for layer in layers:
        kind = layer.get("LayerType", "?")
        if kind in _BOOKKEEPING:
            continue
        precision = layer_precision(layer)
        counts[precision] += 1
        by_type.setdefault(kind, Counter())[precision] += 1
    return {
        "compute_layers": sum(counts.values()),
        "by_precision": dict(counts),
        "by_layer_type": {k: dict(v) for k, v in sorted(by_type.items())},
    }


# ---------------------------------------------------------------------------- Q/DQ checks


def check_qdq_for_tensorrt(onnx_path: Path) -> list[str]:
    """Problems that make TensorRT reject or mis-handle an explicit-quantization graph:
    TensorRT supports symmetric INT8 only (zero points must be 0) and positive scales.
    Returns an empty list for a graph TensorRT can take (including one with no Q/DQ)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    values = {**inits, **consts}
    problems = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = values.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and not np.all(scale > 0):
            problems.append(f"{node.op_type} {node.name or node.output[0]}: non-positive scale")
        if len(node.input) > 2 and node.input[2]:
            zero = values.get(node.input[2])
            if zero is None:
                problems.append(f"{node.op_type} {node.name or node.output[0]}: zero point is not a constant")
            elif zero.dtype == np.uint8:
                problems.append(f"{node.op_type} {node.name or node.output[0]}: uint8 (asymmetric) quantization; "
                                "TensorRT needs int8 with zero point 0")
            elif np.any(zero != 0):
                problems.append(f"{node.op_type} {node.name or node.output[0]}: non-zero zero point (asymmetric)")
    return problems


# ---------------------------------------------------------------------------- metadata


def device_fingerprint() -> dict:
    """The GPU and TensorRT version an engine is built for (needs a GPU)."""
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "tensorrt": trt.__version__,
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
    }


def check_engine_compatible(metadata: dict, current: dict, engine_path: Path) -> None:
    """An engine does not move between GPU models or TensorRT versions: refuse clearly."""
    for key in ("tensorrt", "compute_capability", "gpu"):
        if metadata.get(key) != current.get(key):
            raise CompressError(
                f"{engine_path}: built for {key} {metadata.get(key)!r} but this machine has {current.get(key)!r}; "
                "rebuild the engine here (build_engine stage)"
            )


# ---------------------------------------------------------------------------- build


def build_engine(onnx_path: Path, out_dir: Path, stage: BuildEngineStage, metadata_extra: dict) -> dict:
    """Build and serialize an engine; returns the metadata written beside it."""
    import tensorrt as trt

    from compress.progress import spinner

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StageError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, stage.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if stage.precision in ("fp16", "best"):
        config.set_flag(trt.BuilderFlag.FP16)
    if stage.precision in ("int8", "best"):
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes

    input_names = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile_spec in stage.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(profile_spec, input_names).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)

    cache_path = Path(stage.timing_cache) if stage.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    # minutes of kernel timing on a big model, and the builder says nothing at WARNING level
    with spinner(f"build_engine: building the TensorRT engine ({stage.precision})"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StageError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = out_dir / "model.engine"
    engine_path.write_bytes(bytes(serialized))
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    context = engine.create_execution_context()
    opt = stage.profiles[0]
    for name in input_names:
        context.set_input_shape(name, (opt.opt_batch, opt.opt_seq))
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    report = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    (out_dir / "inspector.json").write_text(report)

    metadata = {
        **device_fingerprint(),
        "precision": stage.precision,
        "profiles": [p.model_dump() for p in stage.profiles],
        "inputs": input_names,
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "layer_precisions": summarize_layer_precisions(report),
        **metadata_extra,
    }
    (out_dir / "engine.json").write_text(json.dumps(metadata, indent=2))
    return metadata


# ---------------------------------------------------------------------------- polygraphy


def compare_with_polygraphy(onnx_path: Path, feed: dict, engine_path: Path | None = None) -> dict:
    """Run the ONNX model through polygraphy's ONNX Runtime runner (and, given an engine,
    its TensorRT runner) on one real batch; returns the outputs per runner and, with both,
    polygraphy's own accuracy comparison."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]))]
    if engine_path is not None:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runners.append(TrtRunner(EngineFromBytes(Path(engine_path).read_bytes())))
    results = Comparator.run(runners, data_loader=[feed])
    outputs = {name: dict(iterations[0]) for name, iterations in results.items()}
    compared = bool(Comparator.compare_accuracy(results)) if engine_path is not None else None
    return {"outputs": outputs, "accurate": compared}
