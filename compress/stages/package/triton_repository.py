"""A Triton Inference Server model repository for a packaged model:
`triton/<name>/config.pbtxt` + `triton/<name>/1/triton_model.onnx` (or `model.plan` for a
TensorRT engine), with dynamic batching and the I/O signature of the ONNX graph.

The ONNX copy is not named model.onnx (config.pbtxt names it: default_model_filename): the
package directory holds exactly one `model.onnx`, so optimum's ORTModel.from_pretrained(package)
picks it without a "multiple ONNX files" warning."""

from __future__ import annotations

from pathlib import Path

# numpy dtype name -> Triton DataType enum (model_config.proto)
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
BACKENDS = {"onnx": ("onnxruntime_onnx", "onnxruntime", "triton_model.onnx", "KIND_CPU"),
            "trt": ("tensorrt_plan", "tensorrt", "model.plan", "KIND_GPU")}


def _triton_dims(shape: list, batched: bool) -> list[int]:
    """Triton leaves the batch dimension out when max_batch_size > 0; dynamic dims are -1."""
    dims = shape[1:] if batched else shape
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


def _tensor_block(t: dict, batched: bool, label_file: str | None = None) -> str:
    if t["dtype"] not in TRITON_DTYPES:
        raise ValueError(f"tensor {t['name']!r} has dtype {t['dtype']} that Triton has no type for")
    lines = [f'    name: "{t["name"]}"', f"    data_type: {TRITON_DTYPES[t['dtype']]}",
             f"    dims: [ {', '.join(str(d) for d in _triton_dims(t['shape'], batched))} ]"]
    if label_file:
        lines.append(f'    label_filename: "{label_file}"')  # Triton's classification extension
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(name: str, kind: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  queue_delay_us: int = 100, labelled: bool = True) -> str:
    """config.pbtxt text. Batching needs a dynamic first dimension on every tensor. Triton's
    classification extension (label_filename) fits one score per label per item: a
    [batch, labels] first output, not per-token tags or start/end logits."""
    platform, backend, model_file, instance = BACKENDS[kind]
    batched = all(t["shape"] and not isinstance(t["shape"][0], int) for t in inputs + outputs)
    tensors_in = ",\n".join(_tensor_block(t, batched) for t in inputs)
    per_item = labelled and len(outputs) == 1 and len(outputs[0]["shape"]) == 2
    tensors_out = ",\n".join(_tensor_block(t, batched, "labels.txt" if i == 0 and per_item else None)
                             for i, t in enumerate(outputs))
    text = (f'name: "{name}"\nplatform: "{platform}"\nbackend: "{backend}"\n'
            f'default_model_filename: "{model_file}"\n'
            f"max_batch_size: {max_batch_size if batched else 0}\n"
            f"input [\n{tensors_in}\n]\noutput [\n{tensors_out}\n]\n")
    if batched:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
    return text + f"instance_group [\n  {{\n    count: 1\n    kind: {instance}\n  }}\n]\n"


def write_triton_repository(root: Path, name: str, kind: str, model_file: Path, inputs: list[dict],
                            outputs: list[dict], labels: list[str] | None, max_batch_size: int) -> Path:
    """Write the repository under root/<name>/; the model file is hard-linked (or copied)."""
    from compress.stages.package.deploy import link_or_copy

    model_dir = root / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    link_or_copy(model_file, model_dir / "1" / BACKENDS[kind][2])
    for extra in model_file.parent.glob(f"{model_file.name}?*"):  # ONNX external data (model.onnx.data)
        link_or_copy(extra, model_dir / "1" / extra.name)
    if labels:  # the label (or tag) names in output order
        (model_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(
        triton_config(name, kind, inputs, outputs, max_batch_size, labelled=bool(labels)), encoding="utf-8")
    return model_dir
