"""Sessions that turn a padded batch into the model's outputs (one array: several outputs,
such as start and end logits, stacked on the last axis), one per runtime, so the task's
metrics and latency are measured the same way on every artifact."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Protocol

import numpy as np

from compress.artifacts import Artifact, ONNXModel, TorchModel, TRTEngine
from compress.errors import CompressError
from compress.generation import (
    FIRST_CALL_INPUTS,
    PAST_PREFIX,
    PRESENT_PREFIX,
    first_call_feed,
)
from compress.tasks import combine_outputs

if TYPE_CHECKING:
    from compress.bench.targets import Target


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

        from compress.models import load_model, load_tokenizer

        torch.set_num_threads(threads)
        self.model = load_model(model.path)
        if getattr(self.model.config, "use_cache", False):  # a decoder: logits only, no key/value cache back
            self.model.config.use_cache = False
        tokenizer = load_tokenizer(model.path)
        self.pad_id = tokenizer.pad_token_id or 0
        # what the tokenizer makes and the model takes (a llama has no token_type_ids)
        takes = inspect.signature(self.model.forward).parameters
        self.input_names = [n for n in tokenizer.model_input_names if n in takes]

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return combine_outputs([t.float().numpy() for t in out.to_tuple()])


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
        # ORT silently falls back to CPU when a requested provider cannot load: refuse that.
        wanted, enabled = (providers or ["CPUExecutionProvider"])[0], self.session.get_providers()
        if wanted not in enabled:
            raise CompressError(f"ONNX Runtime did not enable {wanted} for {model.onnx_path} (it fell back to {', '.join(enabled)})")
        graph_inputs = self.session.get_inputs()
        # A decoder exported with past key/values (optimum's text-generation-with-past): the
        # session fills position_ids and empty past tensors itself, so a batch is only the
        # tokenizer's inputs, and it returns the logits, not the present key/values.
        self._first_call_inputs = _first_call_inputs(graph_inputs, model)
        filled = {name for name, _, _ in self._first_call_inputs}
        self.input_names = [i.name for i in graph_inputs if i.name not in filled]
        self.output_names = [o.name for o in self.session.get_outputs() if not o.name.startswith(PRESENT_PREFIX)]
        self.pad_id = _pad_id(model.path)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: batch[k] for k in self.input_names}
        if self._first_call_inputs:  # a decoder: every batch is a first call
            feeds.update(first_call_feed(self._first_call_inputs, batch["attention_mask"]))
        return combine_outputs(self.session.run(self.output_names, feeds))


ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _first_call_inputs(graph_inputs, model: ONNXModel) -> list[tuple[str, list, type]]:
    """The position_ids, logits_to_keep and past inputs among ONNX Runtime's NodeArgs as (name, shape, dtype)
    for first_call_feed; a past input's head count and head size from config.json where a
    graph rewrite left them symbolic."""
    out = []
    for i in graph_inputs:
        if i.name in FIRST_CALL_INPUTS:
            out.append((i.name, i.shape, np.int64))
        elif i.name.startswith(PAST_PREFIX):
            _, heads, past, head_dim = i.shape
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                heads, head_dim = _config_cache_sizes(model)
            out.append((i.name, [i.shape[0], heads, past, head_dim], ONNX_FLOAT_TYPES.get(i.type, np.float32)))
    return out


def _config_cache_sizes(model: ONNXModel) -> tuple[int, int]:
    """(key/value heads, head size) from the model's config.json."""
    import json

    cfg = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return heads, cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


class TRTSession:
    """A TensorRT engine on the GPU: inputs copied to device buffers, one
    execute_async_v3 on a CUDA stream, synchronised before the logits come back."""

    def __init__(self, model: TRTEngine):
        import json

        import tensorrt as trt
        import torch

        from compress.trt_engine import check_engine_compatible, device_fingerprint

        metadata = json.loads((model.path / "engine.json").read_text())
        check_engine_compatible(metadata, device_fingerprint(), model.engine_path)
        self._torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(model.engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.input_names = list(metadata["inputs"])
        self.output_names = list(metadata["outputs"])
        self.pad_id = _pad_id(model.path)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            inputs = {k: torch.from_numpy(batch[k]).to("cuda", non_blocking=True) for k in self.input_names}
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outs = []
            for name in self.output_names:
                outs.append(torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda"))
                self.context.set_tensor_address(name, outs[-1].data_ptr())
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return combine_outputs([out.cpu().numpy() for out in outs])


class TorchCUDASession:
    """PyTorch eager on the GPU; run() returns host logits, so each call is synchronised."""

    def __init__(self, model: TorchModel, threads: int):
        self._inner = TorchSession(model, threads)
        self._inner.model.to("cuda")
        self.pad_id, self.input_names = self._inner.pad_id, self._inner.input_names

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to("cuda") for k, v in batch.items()}
            out = self._inner.model(**inputs)
        return combine_outputs([t.float().cpu().numpy() for t in out.to_tuple()])


def open_session(artifact: Artifact, threads: int, target: Target | None = None) -> Session:
    """A session for the artifact: on a benchmark target (runtime, device, ONNX Runtime
    provider) when one is given, else on the CPU (an engine always runs on TensorRT)."""
    if target is not None and not isinstance(artifact, target.accepts):
        raise TypeError(f"{target.name} runs {target.accepts.description}, not {type(artifact).description}")
    on_cuda = target is not None and target.device == "cuda"
    if isinstance(artifact, TorchModel):
        return TorchCUDASession(artifact, threads) if on_cuda else TorchSession(artifact, threads)
    if isinstance(artifact, ONNXModel):
        providers = None  # ORTSession's default: the CPU provider
        if target is not None:  # a GPU provider hands the operators it lacks to the CPU one
            providers = [target.provider, "CPUExecutionProvider"] if on_cuda else [target.provider]
        return ORTSession(artifact, threads, providers=providers)
    if isinstance(artifact, TRTEngine):
        return TRTSession(artifact)
    raise TypeError(f"no runtime for {type(artifact).__name__}")
