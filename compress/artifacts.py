"""Typed handles for what flows between stages. Each points at a directory that a
stage wrote and never mutates afterwards; every artifact directory carries its own
tokenizer and config.json (label names), so it can be loaded on its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class Artifact:
    path: Path  # the artifact directory
    description: ClassVar[str] = "an artifact"

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class TorchModel(Artifact):
    """A Hugging Face checkpoint directory (config.json, weights, tokenizer)."""

    description: ClassVar[str] = "a torch model"

    def size_bytes(self) -> int:  # weights only: tokenizer files are shared by all formats
        return sum(f.stat().st_size for f in self.path.glob("*.safetensors")) or super().size_bytes()


@dataclass(frozen=True)
class ONNXModel(Artifact):
    """A directory holding model.onnx plus the tokenizer and config.json."""

    description: ClassVar[str] = "an ONNX model"
    filename: ClassVar[str] = "model.onnx"

    @property
    def onnx_path(self) -> Path:
        return self.path / self.filename

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("model.onnx*"))


@dataclass(frozen=True)
class TRTEngine(Artifact):
    """A directory holding model.engine, engine.json (the GPU, TensorRT version and
    profiles it was built for), the tokenizer and config.json."""

    description: ClassVar[str] = "a TensorRT engine"
    filename: ClassVar[str] = "model.engine"

    @property
    def engine_path(self) -> Path:
        return self.path / self.filename

    def size_bytes(self) -> int:
        return self.engine_path.stat().st_size


ARTIFACT_KINDS: dict[str, type[Artifact]] = {"torch": TorchModel, "onnx": ONNXModel, "trt": TRTEngine}


def artifact_kind(artifact: Artifact) -> str:
    return next(k for k, cls in ARTIFACT_KINDS.items() if type(artifact) is cls)


def copy_sidecar_files(src: Path, dst: Path) -> None:
    """Copy tokenizer and config files (everything but the model weights/graph)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        weights = f.name.startswith(("model.onnx", "model.engine")) or f.suffix in (".safetensors", ".bin")
        if f.is_file() and not weights and f.name not in ("stage.json", "engine.json", "inspector.json"):
            shutil.copy2(f, dst / f.name)
