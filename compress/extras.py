"""Which optional part of compress is installed. The base distribution is the deploy-time
runtime (onnxruntime, tokenizers, numpy: `compress.runtime.Predictor`, `compress predict`);
running recipes and benchmarks needs the `train` extra. Stdlib only: the CLI asks before
importing anything heavy, so a runtime-only install fails with one line saying what to install."""

from __future__ import annotations

import importlib.util

from compress.errors import CompressError

# Top-level modules of the training stack that compress imports (the `train` extra of pyproject.toml).
TRAIN_MODULES: tuple[str, ...] = ("torch", "transformers", "optimum", "onnx", "accelerate", "nncf", "yaml",
                                  "pydantic", "filelock", "huggingface_hub", "matplotlib", "seqeval")
TRAIN_INSTALL = "pip install 'compress[train]'"


class MissingExtraError(CompressError):
    """A command needs an optional part of compress that is not installed."""


def missing_training_modules() -> list[str]:
    """The training stack's modules this environment lacks (found without importing them)."""
    missing = []
    for name in TRAIN_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_training_stack(what: str) -> None:
    """MissingExtraError, one line, when `what` (e.g. 'compress run') cannot run here."""
    missing = missing_training_modules()
    if missing:
        raise MissingExtraError(f"{what} needs the training stack, which is not installed here "
                                f"(missing: {', '.join(missing)}): {TRAIN_INSTALL}")
