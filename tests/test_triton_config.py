"""config.pbtxt parsed with protobuf's own text-format parser against the subset of
Triton's model_config.proto we emit (field names and enums as in Triton's proto), so a
misspelt field or enum fails to parse; then checked against the ONNX graph."""

from __future__ import annotations

import pytest

pytest.importorskip("google.protobuf")

from google.protobuf import descriptor_pb2, descriptor_pool, text_format  # noqa: E402
from google.protobuf.message_factory import GetMessageClass  # noqa: E402

from compress.stages.package.triton_repository import (  # noqa: E402
    triton_config,
    write_triton_repository,
)

F = descriptor_pb2.FieldDescriptorProto
# Triton's DataType enum (model_config.proto) and ModelInstanceGroup.Kind
DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
              "TYPE_BF16"]
KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]


def _model_config_class():
    file = descriptor_pb2.FileDescriptorProto(name="triton_subset.proto", package="inference", syntax="proto3")
    for enum_name, values in (("DataType", DATA_TYPES), ("Kind", KINDS)):
        enum = file.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)

    def message(name, *fields):
        msg = file.message_type.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".inference.{type_name}"

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("ModelInput", ("name", F.TYPE_STRING, one, None), ("data_type", F.TYPE_ENUM, one, "DataType"),
            ("dims", F.TYPE_INT64, many, None))
    message("ModelOutput", ("name", F.TYPE_STRING, one, None), ("data_type", F.TYPE_ENUM, one, "DataType"),
            ("dims", F.TYPE_INT64, many, None), ("label_filename", F.TYPE_STRING, one, None))
    message("ModelDynamicBatching", ("max_queue_delay_microseconds", F.TYPE_UINT64, one, None))
    message("ModelInstanceGroup", ("count", F.TYPE_INT32, one, None), ("kind", F.TYPE_ENUM, one, "Kind"))
    message("ModelConfig", ("name", F.TYPE_STRING, one, None), ("platform", F.TYPE_STRING, one, None),
            ("backend", F.TYPE_STRING, one, None), ("max_batch_size", F.TYPE_INT32, one, None),
            ("input", F.TYPE_MESSAGE, many, "ModelInput"), ("output", F.TYPE_MESSAGE, many, "ModelOutput"),
            ("dynamic_batching", F.TYPE_MESSAGE, one, "ModelDynamicBatching"),
            ("instance_group", F.TYPE_MESSAGE, many, "ModelInstanceGroup"),
            ("default_model_filename", F.TYPE_STRING, one, None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def parse(text: str):
    return text_format.Parse(text, ModelConfig())


def test_the_parser_is_strict():
    with pytest.raises(text_format.ParseError):
        parse('name: "x"\nmax_batch: 3\n')
    with pytest.raises(text_format.ParseError):
        parse('input [ { name: "a" data_type: TYPE_LONG } ]')


def test_packaged_triton_config_matches_the_onnx_graph(tmp_path_factory, tiny_classifier_dir):
    import onnx

    from tests.helpers import run_tiny

    run_dir = run_tiny(tmp_path_factory.mktemp("triton"), tiny_classifier_dir,
                       "\n  - kind: export_onnx\n  - kind: package\n    name: clf\n    triton_max_batch_size: 16\n")
    repo = run_dir / "02-package" / "triton" / "clf"
    config = parse((repo / "config.pbtxt").read_text())
    assert config.default_model_filename == "triton_model.onnx"  # not a second model.onnx in the package
    graph = onnx.load(str(repo / "1" / "triton_model.onnx")).graph
    assert (repo / "1" / "triton_model.onnx").read_bytes() == (run_dir / "02-package" / "model.onnx").read_bytes()
    assert config.name == "clf" and config.backend == "onnxruntime" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds > 0
    onnx_to_triton = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}

    def expected(values):  # batch dimension dropped (max_batch_size > 0), dynamic dims -1
        return [(v.name, onnx_to_triton[v.type.tensor_type.elem_type],
                 [d.dim_value or -1 for d in v.type.tensor_type.shape.dim][1:]) for v in values]

    def ours(tensors):
        return [(t.name, DATA_TYPES[t.data_type], list(t.dims)) for t in tensors]

    assert ours(config.input) == expected(graph.input)
    assert ours(config.output) == expected(graph.output) == [("logits", "TYPE_FP32", [2])]
    labels = (repo / config.output[0].label_filename).read_text().split()
    assert labels == ["neg", "pos"]
    assert KINDS[config.instance_group[0].kind] == "KIND_CPU"


def test_tensorrt_repository_uses_a_plan_on_the_gpu(tmp_path):
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"engine bytes")
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}]
    repo = write_triton_repository(tmp_path / "triton", "m", "trt", plan, inputs, outputs, ["a", "b", "c"], 8)
    config = parse((repo / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt" and config.max_batch_size == 8
    assert (repo / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert KINDS[config.instance_group[0].kind] == "KIND_GPU"
    assert list(config.output[0].dims) == [3]


def test_static_batch_dimension_disables_batching():
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": [1, 128]}]
    outputs = [{"name": "logits", "dtype": "float32", "shape": [1, 2]}]
    config = parse(triton_config("m", "onnx", inputs, outputs, 32))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 128]
