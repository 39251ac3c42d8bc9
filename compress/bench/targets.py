"""Benchmark targets: a runtime on a device. Each says which artifact kind it runs and,
when it cannot run on this machine, why (never a crash, never a made-up number)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from compress.artifacts import Artifact, ONNXModel, TorchModel, TRTEngine


@dataclass(frozen=True)
class Target:
    name: str
    accepts: type[Artifact]
    device: str  # "cpu" or "cuda"
    provider: str | None = None  # ONNX Runtime execution provider
    description: str = ""


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("torch-cpu", TorchModel, "cpu", description="PyTorch eager, fp32, CPU"),
    Target("ort-cpu", ONNXModel, "cpu", "CPUExecutionProvider", "ONNX Runtime CPU execution provider"),
    Target("torch-cuda", TorchModel, "cuda", description="PyTorch eager, fp32, CUDA GPU"),
    Target("ort-cuda", ONNXModel, "cuda", "CUDAExecutionProvider", "ONNX Runtime CUDA execution provider"),
    Target("ort-trt", ONNXModel, "cuda", "TensorrtExecutionProvider", "ONNX Runtime TensorRT execution provider"),
    Target("trt", TRTEngine, "cuda", description="TensorRT engine (compress TRTSession)"),
)}


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def _ort_provider_reason(provider: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if provider not in available:
        extra = "" if provider == "CPUExecutionProvider" else " (install the 'gpu' extra, onnxruntime-gpu, in its own environment)"
        return f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(available)}){extra}"
    return None


def unavailable_reason(name: str) -> str | None:
    """Why target `name` cannot run here, or None if it can."""
    forced = os.environ.get("COMPRESS_BENCH_DISABLE", "")  # lets tests exercise the skipped path
    if name in {t.strip() for t in forced.split(",") if t.strip()}:
        return f"disabled by COMPRESS_BENCH_DISABLE={forced}"
    target = TARGETS[name]
    if name == "trt":
        from compress.trt_engine import trt_unavailable_reason

        return trt_unavailable_reason()
    if target.device == "cuda" and (reason := _cuda_reason()):
        return reason
    if target.provider:
        return _ort_provider_reason(target.provider)
    return None


def target_report() -> list[tuple[str, str, str | None]]:
    """(name, description, reason or None) for every target, for `compress targets`."""
    return [(t.name, t.description, unavailable_reason(t.name)) for t in TARGETS.values()]
