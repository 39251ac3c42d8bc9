"""Sessions that turn a padded batch into logits, one per runtime, so accuracy and
latency are measured the same way on every artifact."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from compress.artifacts import Artifact, ONNXModel, TorchModel


class Session(Protocol):
    input_names: list[str]
    pad_id: int

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


def _pad_id(path) -> int:
    from compress.models import load_tokenizer

    return load_tokenizer(path).pad_token_id or 0


class TorchSession:
    def __init__(self, model: TorchModel, threads: int):
        import torch

        from compress.models import load_classifier, load_tokenizer

        torch.set_num_threads(threads)
        self.model = load_classifier(model.path)
        tokenizer = load_tokenizer(model.path)
        self.pad_id = tokenizer.pad_token_id or 0
        self.input_names = list(tokenizer.model_input_names)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy()


class ORTSession:
    def __init__(self, model: ONNXModel, threads: int, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model.onnx_path), opts, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.pad_id = _pad_id(model.path)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: batch[k] for k in self.input_names})[0]


def open_session(artifact: Artifact, threads: int) -> Session:
    if isinstance(artifact, TorchModel):
        return TorchSession(artifact, threads)
    if isinstance(artifact, ONNXModel):
        return ORTSession(artifact, threads)
    raise TypeError(f"no runtime for {type(artifact).__name__}")
