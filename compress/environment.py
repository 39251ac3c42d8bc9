"""What a result was measured on and how: Python, platform, CPU (its identity and the vector
instruction sets that decide which INT8 kernels run), the versions of the stack, the git
commit (and whether the working tree was modified) and the command line. Recorded in every
manifest, benchmark row and model card."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        "cpu": cpu_identity(),
        "instruction_sets": _instruction_sets(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        **git_state(),
        "command": command_line(),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `compress ...` for the CLI (however it was started), else argv."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("compress", "__main__.py") or argv[0] == "-m"):
        argv = ["compress", *argv[1:]]
    return shlex.join(argv)


def git_state() -> dict:
    """The commit of the compress checkout and whether tracked files differ from it
    (`git_dirty`: the numbers came from code no commit holds). None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if sha.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    dirty = bool(status.stdout.strip())
    return {"git_commit": sha.stdout.strip() + ("-dirty" if dirty else ""), "git_dirty": dirty}


# (vendor, family, model) → microarchitecture, for CPUs whose hypervisor hides the model
# name ("AMD EPYC" alone): family 25 model 17 is Zen 4, EPYC 9004 "Genoa".
MICROARCHITECTURES = {
    ("AuthenticAMD", 23, 49): "Zen 2 (EPYC 7002 Rome)",
    ("AuthenticAMD", 25, 1): "Zen 3 (EPYC 7003 Milan)",
    ("AuthenticAMD", 25, 17): "Zen 4 (EPYC 9004 Genoa)",
    ("AuthenticAMD", 25, 160): "Zen 4c (EPYC 97x4 Bergamo)",
    ("AuthenticAMD", 26, 2): "Zen 5 (EPYC 9005 Turin)",
    ("GenuineIntel", 6, 106): "Ice Lake-SP",
    ("GenuineIntel", 6, 143): "Sapphire Rapids",
    ("GenuineIntel", 6, 207): "Emerald Rapids",
    ("GenuineIntel", 6, 85): "Skylake-SP / Cascade Lake",
}


def cpu_identity(cpuinfo: str | None = None) -> str:
    """The CPU as /proc/cpuinfo identifies it: model name, vendor, family, model and stepping,
    the microarchitecture they mean where known, and 'VM' under a hypervisor."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        family, model = int(fields.get("cpu family", "")), int(fields.get("model", ""))
    except ValueError:
        return fields.get("model name") or platform.processor() or platform.machine()
    vendor = fields.get("vendor_id", "?")
    arch = MICROARCHITECTURES.get((vendor, family, model))
    parts = [fields.get("model name", "?"), f"{vendor} family {family} model {model} stepping {fields.get('stepping', '?')}"]
    if arch:
        parts.append(arch)
    if "hypervisor" in fields.get("flags", "").split():
        parts.append("VM")
    return ", ".join(parts)


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
# avx512_vnni's VPDPBUSD multiplies unsigned by signed bytes (ONNX Runtime's U8S8 kernels);
# avx_vnni_int8's VPDPBSSD is the signed-by-signed one its x86 S8S8 kernels need.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16", "amx_tile",
                "amx_int8", "amx_bf16")


def _instruction_sets() -> list[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in VECTOR_FLAGS if f in flags]
    except OSError:
        pass
    return None
