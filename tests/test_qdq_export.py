"""gather_before_dequantize on hand-built graphs: a quantized embedding table looked up
after its dequantization gives exactly the same rows when the int8 rows are gathered
first (per-row scales with and without zero points, a per-tensor scale), and per-column
scales are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.stages.qat.qdq_export import gather_before_dequantize

VOCAB, WIDTH = 50, 8


def embedding_graph(path, scale, zero, axis: int = 0):
    rng = np.random.default_rng(0)
    table = rng.integers(-127, 128, size=(VOCAB, WIDTH), dtype=np.int8)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(scale, "scale"),
             numpy_helper.from_array(zero, "zero")]
    nodes = [helper.make_node("DequantizeLinear", ["table", "scale", "zero"], ["table_float"], axis=axis),
             helper.make_node("Gather", ["table_float", "ids"], ["rows"], axis=0),
             helper.make_node("Relu", ["rows"], ["out"])]
    graph = helper.make_graph(nodes, "embedding", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", WIDTH])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


@pytest.mark.parametrize("scale, zero", [
    (np.linspace(0.01, 0.5, VOCAB, dtype=np.float32), np.zeros(VOCAB, np.int8)),  # per row, symmetric
    (np.linspace(0.01, 0.5, VOCAB, dtype=np.float32), np.arange(VOCAB, dtype=np.int8) % 7 - 3),  # per row, offsets
    (np.array(0.05, np.float32), np.array(2, np.int8)),  # per tensor
], ids=["per-row", "per-row-zero-points", "per-tensor"])
def test_gathering_int8_rows_first_gives_the_same_rows(tmp_path, scale, zero):
    path = tmp_path / "m.onnx"
    embedding_graph(path, scale, zero)
    ids = np.array([[0, 7, 49, 7], [3, 3, 1, 0]], dtype=np.int64)
    before = run(path, ids)
    assert gather_before_dequantize(path) == 1
    graph = onnx.load(str(path)).graph
    first = graph.node[0]
    assert first.op_type == "Gather" and first.input[0] == "table"  # the int8 table, looked up first
    np.testing.assert_array_equal(run(path, ids), before)


def test_per_column_scales_are_left_alone(tmp_path):
    path = tmp_path / "m.onnx"
    embedding_graph(path, np.linspace(0.01, 0.5, WIDTH, dtype=np.float32), np.zeros(WIDTH, np.int8), axis=1)
    assert gather_before_dequantize(path) == 0
    assert onnx.load(str(path)).graph.node[0].op_type == "DequantizeLinear"
