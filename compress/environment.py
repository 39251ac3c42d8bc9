"""What a result was measured on: Python, platform, CPU and the versions of the stack.
Recorded in every manifest, benchmark row and model card."""

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
