"""What a result was measured on: Python, platform, CPU (with the vector instruction sets
that decide which INT8 kernels run) and the versions of the stack. Recorded in every
manifest, benchmark row and model card."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("compress", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "nncf"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "instruction_sets": _instruction_sets(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# The CPU features that change what INT8 and fp32 kernels ONNX Runtime and torch pick (and
# so both speed and, for dynamic quantization, the exact outputs): "AMD EPYC" alone does not say.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def _instruction_sets() -> list[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in VECTOR_FLAGS if f in flags]
    except OSError:
        pass
    return None
