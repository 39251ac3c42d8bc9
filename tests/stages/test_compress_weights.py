"""compress_weights on the tiny llama's exported decoder graph (optimum's text-generation-with-past,
at opset 18 and 21) and on the tiny BERT classifier: each supported backend / bits / grouping
runs in ONNX Runtime, shrinks the file by what its bits and scales predict, writes the
expected quantized ops, and its dequantized weights sit within half a quantization step of the
float ones; the unsupported combinations fail with one line naming the field."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from compress.artifacts import ONNXModel
from compress.errors import StageError
from compress.stages.compress_weights import (
    CompressWeightsStage,
    empty_past_feed,
    graph_input_specs,
)
from tests.conftest import make_paragraphs, tiny_recipe_text
from tests.helpers import recipe_error, run_tiny, stage_json

NAME_BYTES = 150  # per compressed weight: new names and attributes (measured 50 with NNCF, 250 with ORT)


@pytest.fixture(scope="module")
def llama_onnx(tiny_llama_dir, tmp_path_factory):
    """llama_onnx(opset): the tiny llama exported the way export_onnx does for causal-lm
    (optimum's text-generation-with-past), once per opset."""
    from optimum.exporters.onnx import main_export

    exported: dict[int, ONNXModel] = {}

    def at(opset: int) -> ONNXModel:
        if opset not in exported:
            out = tmp_path_factory.mktemp(f"llama-onnx{opset}")
            main_export(str(tiny_llama_dir), output=str(out), task="text-generation-with-past", opset=opset,
                        device="cpu", do_validation=False, no_post_process=True, local_files_only=True)
            exported[opset] = ONNXModel(out)
        return exported[opset]

    return at


def fake_ctx(out: Path, rows: int = 16) -> SimpleNamespace:
    """What the stage reads from its context: its directory, the train split, the task's
    encode (the plain tokenizer call) and the recipe's max_length; record() fills `info`."""
    from compress.data import TextDataset
    from compress.tasks import get_task

    info: dict = {}
    train = TextDataset(texts=make_paragraphs(rows), labels=[0] * rows, rows=list(range(rows)))
    return SimpleNamespace(artifact_dir=out, info=info, record=info.update, task=get_task("text-classification"),
                           splits=SimpleNamespace(train=train),
                           recipe=SimpleNamespace(trust_remote_code=False, data=SimpleNamespace(max_length=32)))


def run_stage(model: ONNXModel, out: Path, **fields) -> tuple[ONNXModel, dict]:
    ctx = fake_ctx(out)
    result = CompressWeightsStage(kind="compress_weights", **fields).run(model, ctx)
    return result, ctx.info


def logits(model: ONNXModel, ids: list[int]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT fuses DequantizeLinear(int4 blocks) + MatMul into MatMulNBits computing with int8
    # activations (accuracy level 4) unless told otherwise: here the float compute, to compare
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(model.onnx_path), options, providers=["CPUExecutionProvider"])
    feed = empty_past_feed(ids, graph_input_specs(onnx.load(str(model.onnx_path))))
    return session.run(["logits"], feed)[0][0]


# ---------------------------------------------------------------------------- reading weights back


def _run_node(node, graph, feeds: dict) -> np.ndarray:
    """Run one node of `graph` alone in ONNX Runtime, with its constant inputs copied in."""
    import onnxruntime as ort

    inits = [t for t in graph.initializer if t.name in node.input]
    inputs = [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in feeds.items()]
    out = onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
    g = onnx.helper.make_graph([node], "one", inputs, [out], initializer=inits)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 21),
                                                     onnx.helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]


def _step(node, values: dict, shape: tuple) -> np.ndarray:
    """The quantization step of every weight element, expanded from the node's scales."""
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "MatMulNBits":  # scales [N * blocks], K along the blocks
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        scales = values[node.input[2]].reshape(n, -1)
        return np.repeat(scales, block, axis=1)[:, :k].T
    scale, axis = values[node.input[1]], attrs.get("axis", 1)
    if attrs.get("block_size"):
        return np.repeat(scale, attrs["block_size"], axis=axis)
    if scale.ndim == 1:
        return scale.reshape([-1 if d == axis % len(shape) else 1 for d in range(len(shape))])
    return scale


def weight_errors(original: ONNXModel, compressed: ONNXModel) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Per float weight of the original graph (MatMul and Gather): its bits in the compressed
    graph (32: left float) and |dequantized - float| in quantization steps, apart for the
    elements a symmetric grid clips (float beyond its top level, 2^(bits-1) - 1 steps: the
    largest magnitude of a group maps to -2^(bits-1) and its positive twin cannot). The
    dequantized weight is what ONNX Runtime computes from the compressed graph's own node;
    the second dict holds them by the original weight's name."""
    from onnx import numpy_helper

    source = onnx.load(str(original.onnx_path)).graph
    float_weights = {t.name: numpy_helper.to_array(t) for t in source.initializer}
    graph = onnx.load(str(compressed.onnx_path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dtypes = {t.name: t.data_type for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found, dequantized = {}, {}
    for node in source.node:
        port = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        if port is None or node.input[port] not in float_weights or float_weights[node.input[port]].ndim != 2:
            continue
        w = float_weights[node.input[port]].astype(np.float64)
        new = producer[node.output[0]]
        if new.op_type == "MatMulNBits":
            deq = _run_node(new, graph, {new.input[0]: np.eye(w.shape[0], dtype=np.float32)})
            bits = next(a.i for a in new.attribute if a.name == "bits")
        elif producer.get(new.input[port]) is not None and producer[new.input[port]].op_type == "DequantizeLinear":
            new = producer[new.input[port]]
            deq = _run_node(new, graph, {})
            bits = 4 if dtypes[new.input[0]] in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else 8
        else:
            found[node.name] = {"bits": 32}
            continue
        dequantized[node.input[port]] = deq
        step = _step(new, values, w.shape).astype(np.float64)  # NNCF's symmetric scales carry a sign
        steps = np.abs(deq - w) / np.abs(step)
        top = 2 ** (bits - 1) - 1
        clipped = np.isclose(deq / step, top, atol=1e-3) & (w / step > top)
        found[node.name] = {"bits": bits, "steps": float(steps[~clipped].max()), "clipped": int(clipped.sum()),
                            "clipped_steps": float(steps[clipped].max()) if clipped.any() else 0.0}
    return found, dequantized


def with_weights(original: ONNXModel, weights: dict[str, np.ndarray], out: Path) -> ONNXModel:
    """The float graph with some weights replaced (by their dequantized values)."""
    from onnx import numpy_helper

    model = onnx.load(str(original.onnx_path))
    for t in model.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    out.mkdir(parents=True)
    onnx.save(model, str(out / "model.onnx"))
    return ONNXModel(out)


def _value_info_bytes(model: ONNXModel) -> int:
    return sum(v.ByteSize() for v in onnx.load(str(model.onnx_path)).graph.value_info)


def expected_size(original: ONNXModel, compressed: ONNXModel, layers: dict, stage: CompressWeightsStage) -> int:
    """The compressed file's size predicted from the original: each compressed weight's fp32
    bytes replaced by its bits, a float32 scale per group and, when asymmetric, a zero point of
    the same bits per group. Groups: group_size weights along the input (rows of a MatMul
    weight, columns of an embedding), or one per output channel where NNCF stores INT8 (per
    channel only; asymmetric for its embedding and lm_head backup layers)."""
    graph = onnx.load(str(original.onnx_path)).graph
    weights = {t.name: t for t in graph.initializer}
    # NNCF also writes its shape inference into the graph (value_info): node-sized, not weights
    size = original.onnx_path.stat().st_size + _value_info_bytes(compressed) - _value_info_bytes(original)
    for node in graph.node:
        if node.name not in layers or layers[node.name]["bits"] == 32:
            continue
        bits = layers[node.name]["bits"]
        dims = list(weights[node.input[1 if node.op_type == "MatMul" else 0]].dims)
        n = int(np.prod(dims))
        per_channel = stage.resolved_group_size == -1 or (stage.backend == "nncf" and bits == 8)
        channels = dims[1] if node.op_type == "MatMul" else dims[0]
        groups = channels if per_channel else n // stage.resolved_group_size
        backup = stage.backend == "nncf" and stage.bits == 4 and bits == 8  # NNCF's INT8_ASYM backup
        zero_point = backup or not stage.symmetric
        size += n * bits / 8 - 4 * n + groups * (4 + (bits / 8 if zero_point else 0)) + NAME_BYTES
    return int(size)


# ---------------------------------------------------------------------------- supported combinations

RTN = [  # (opset, fields, the op that carries the compressed weights)
    (18, dict(backend="nncf", bits=8), "DequantizeLinear"),
    (18, dict(backend="nncf", bits=8, symmetric=False), "DequantizeLinear"),
    (18, dict(backend="nncf", bits=4, group_size=16), "MatMulNBits"),
    (21, dict(backend="nncf", bits=4, group_size=32), "DequantizeLinear"),
    (21, dict(backend="nncf", bits=4, group_size=16, symmetric=False), "DequantizeLinear"),
    (21, dict(backend="nncf", bits=4, group_size=-1), "DequantizeLinear"),
    (18, dict(backend="onnxruntime", bits=4, group_size=16), "MatMulNBits"),
    (21, dict(backend="onnxruntime", bits=4, group_size=32, symmetric=False), "MatMulNBits"),
    (18, dict(backend="onnxruntime", bits=8, group_size=16), "MatMulNBits"),
    (18, dict(backend="onnxruntime", bits=8, group_size=32, symmetric=False), "MatMulNBits"),
]


def _id(value) -> str:
    return "-".join(str(v) for v in value.values()) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("opset, fields, op", RTN, ids=_id)
def test_round_to_nearest_combinations(opset, fields, op, llama_onnx, tmp_path):
    source = llama_onnx(opset)
    stage = CompressWeightsStage(kind="compress_weights", **fields)
    result, info = run_stage(source, tmp_path / "out", **fields)
    record = info["weight_compression"]
    layers, dequantized = weight_errors(source, result)
    nncf = stage.backend == "nncf"
    # which layers: NNCF every MatMul and the embedding, its embedding and lm_head at INT8 when
    # the rest is 4-bit; ONNX Runtime every MatMul with a constant weight, the embedding float
    assert layers["/model/embed_tokens/Gather"]["bits"] == (8 if nncf else 32)
    assert layers["/lm_head/MatMul"]["bits"] == (8 if nncf else stage.bits)
    blocks = [v["bits"] for k, v in layers.items() if k not in ("/model/embed_tokens/Gather", "/lm_head/MatMul")]
    assert blocks == [stage.bits] * 14  # q, k, v, o, gate, up, down in both layers
    assert record["quantized_ops"].get(op, 0) >= 14 and record["float_matmul_weights"] == 0
    # round to nearest: every element within half a step of its float value, or clipped at the
    # top of a symmetric grid (then within one step)
    for name, layer in layers.items():
        if layer["bits"] < 32:
            assert layer["steps"] <= 0.5 + 1e-4, (name, layer)
            assert layer["clipped_steps"] <= 1 + 1e-4, (name, layer)
    # size: each compressed weight's float bytes replaced by its bits and group scales
    expected = expected_size(source, result, layers, stage)
    size = result.onnx_path.stat().st_size
    assert abs(size - expected) <= NAME_BYTES * len(dequantized), (size, expected)
    # the graph runs as a decoder and computes what the float graph computes with the
    # dequantized weights (float rounding apart); top-1 next token the same on most positions
    ids = list(range(3, 40))
    reference, compressed = logits(source, ids), logits(result, ids)
    substituted = logits(with_weights(source, dequantized, tmp_path / "dequantized"), ids)
    assert compressed.shape == reference.shape == (len(ids), 300)
    np.testing.assert_allclose(compressed, substituted, atol=1e-5 * np.abs(reference).max(), rtol=0)
    assert (compressed.argmax(-1) == reference.argmax(-1)).mean() > 0.5


@pytest.mark.parametrize("opset, fields", [
    (18, dict(method="awq", group_size=16)),
    (21, dict(method="awq", group_size=16, symmetric=False)),
    (18, dict(method="scale_estimation", group_size=16)),
], ids=_id)
def test_data_aware_methods_calibrate_on_the_train_split(opset, fields, llama_onnx, tmp_path):
    source = llama_onnx(opset)
    result, info = run_stage(source, tmp_path / "out", backend="nncf", bits=4, calibration_samples=8, **fields)
    assert info["calibration"] == {"method": fields["method"], "samples": 8, "source": "train split (first rows)"}
    rtn, _ = run_stage(source, tmp_path / "rtn", backend="nncf", bits=4,
                       **{k: v for k, v in fields.items() if k != "method"})
    layers, dequantized = weight_errors(source, result)
    _, rtn_weights = weight_errors(source, rtn)
    assert [v["bits"] for v in layers.values()].count(4) == 14
    # the method moved weights off the round-to-nearest grid (AWQ rescales channels, scale
    # estimation refits the scales), and the graph still computes what its weights say
    moved = [k for k in dequantized if not np.array_equal(dequantized[k], rtn_weights[k])]
    assert moved, "the data-aware method left every weight where RTN puts it"
    ids = list(range(3, 40))
    reference, compressed = logits(source, ids), logits(result, ids)
    substituted = logits(with_weights(source, dequantized, tmp_path / "dequantized"), ids)
    np.testing.assert_allclose(compressed, substituted, atol=1e-5 * np.abs(reference).max(), rtol=0)
    assert (compressed.argmax(-1) == reference.argmax(-1)).mean() > 0.5


def test_ratio_mixes_4_and_8_bit_layers(llama_onnx, tmp_path):
    source = llama_onnx(18)
    result, info = run_stage(source, tmp_path / "out", backend="nncf", bits=4, group_size=16, ratio=0.5)
    layers, _ = weight_errors(source, result)
    bits = [v["bits"] for k, v in layers.items() if k not in ("/model/embed_tokens/Gather", "/lm_head/MatMul")]
    # NNCF ranks the 14 ratio-defining layers by quantization error and puts about half their
    # weights (a share of parameters, not of layers) in 4 bits, the rest in INT8
    assert 0 < bits.count(4) < 14 and bits.count(4) + bits.count(8) == 14
    assert info["weight_compression"]["layers_by_bits"]["int4"] == bits.count(4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnxruntime_quantizes_the_embedding_at_opset_21(symmetric, llama_onnx, tmp_path):
    source = llama_onnx(21)
    result, info = run_stage(source, tmp_path / "out", backend="onnxruntime", group_size=16, symmetric=symmetric,
                             quantize_embedding=True)
    assert info["weight_compression"]["quantized_ops"] == {"MatMulNBits": 15, "GatherBlockQuantized": 1}
    # the embedding rows a prompt reads, dequantized by ONNX Runtime's own kernel (run as the graph's
    # only node), within half a step of the float table; steps from the node's scales
    from onnx import numpy_helper

    graph = onnx.load(str(result.onnx_path)).graph
    node = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    table = next(numpy_helper.to_array(t) for t in onnx.load(str(source.onnx_path)).graph.initializer
                 if t.name == "model.embed_tokens.weight")
    ids = np.arange(table.shape[0], dtype=np.int64)
    rows = _run_gather(node, graph, ids)
    step = np.repeat(values[node.input[2]].astype(np.float64), 16, axis=1)  # signed when symmetric
    steps = np.abs(rows - table) / np.abs(step)
    top = np.isclose(rows / step, 7, atol=1e-3) & (table / step > 7)  # a symmetric grid's clipped edge
    assert steps[~top].max() <= 0.5 + 1e-4 and (steps[top].max() if top.any() else 0) <= 1 + 1e-4
    # the float table's bytes replaced by 4 bits, a float32 scale (and a 4-bit zero point) per block
    plain, _ = run_stage(source, tmp_path / "plain", backend="onnxruntime", group_size=16, symmetric=symmetric)
    saved = plain.onnx_path.stat().st_size - result.onnx_path.stat().st_size
    blocks = table.size // 16
    predicted = 4 * table.size - table.size / 2 - blocks * (4 + (0 if symmetric else 0.5)) - NAME_BYTES
    assert abs(saved - predicted) <= NAME_BYTES, (saved, predicted)


def _run_gather(node, graph, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    inits = [t for t in graph.initializer if t.name in node.input]
    inputs = [onnx.helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, ids.shape)]
    out = onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "one", inputs, [out], initializer=inits),
                                   opset_imports=[onnx.helper.make_opsetid("", 21),
                                                  onnx.helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString()).run(None, {node.input[1]: ids})[0]


def test_hqq_fits_zero_points_within_a_step(llama_onnx, tmp_path):
    source = llama_onnx(18)
    result, info = run_stage(source, tmp_path / "out", backend="onnxruntime", method="hqq", group_size=16,
                             symmetric=False)
    layers, dequantized = weight_errors(source, result)
    assert info["weight_compression"]["quantized_ops"] == {"MatMulNBits": 15}
    # HQQ is not round to nearest: it shifts each block's zero point to cut the weights' error
    # in an l_p norm (p < 1), trading a few larger errors; none past one step here
    assert all(v["bits"] == 32 or max(v["steps"], v["clipped_steps"]) <= 1 for v in layers.values())
    ids = list(range(3, 40))
    reference, compressed = logits(source, ids), logits(result, ids)
    substituted = logits(with_weights(source, dequantized, tmp_path / "dequantized"), ids)
    np.testing.assert_allclose(compressed, substituted, atol=1e-5 * np.abs(reference).max(), rtol=0)


# ---------------------------------------------------------------------------- refused


@pytest.mark.parametrize("fields, field", [
    (dict(method="gptq"), "method"),
    (dict(backend="nncf", method="hqq"), "method"),
    (dict(backend="onnxruntime", method="awq"), "method"),
    (dict(group_size=48), "group_size"),
    (dict(group_size=8), "group_size"),
    (dict(backend="nncf", bits=8, group_size=32), "group_size"),
    (dict(backend="nncf", bits=8, ratio=0.5), "ratio"),
    (dict(backend="nncf", bits=8, method="awq"), "method"),
    (dict(backend="onnxruntime", ratio=0.8), "ratio"),
    (dict(backend="onnxruntime", group_size=-1), "group_size"),
    (dict(backend="onnxruntime", method="hqq", symmetric=False, bits=8), "bits"),
    (dict(backend="onnxruntime", method="hqq"), "symmetric"),
    (dict(backend="nncf", accuracy_level=0), "accuracy_level"),
    (dict(backend="nncf", quantize_embedding=True), "quantize_embedding"),
    (dict(backend="onnxruntime", quantize_embedding=True, bits=8), "quantize_embedding"),
    (dict(calibration_samples=16), "calibration_samples"),
    (dict(bits=2), "bits"),
    (dict(all_layers=True), "all_layers"),
], ids=_id)
def test_unsupported_combinations_fail_in_one_line(fields, field):
    with pytest.raises(ValidationError) as info:
        CompressWeightsStage(kind="compress_weights", **fields)
    error = info.value.errors()[0]
    message = f"{'.'.join(map(str, error['loc']))} {error['msg']}"
    assert field in message and "\n" not in error["msg"], message


def test_opset_limits_are_checked_against_export_onnx(recipe_dir):
    stages = "\n  - kind: export_onnx\n  - kind: compress_weights\n    bits: 4\n    symmetric: false\n"
    message = recipe_error(recipe_dir, tiny_recipe_text(stages=stages))
    assert "stages[1] (compress_weights): symmetric: false" in message and "opset 21" in message
    stages = "\n  - kind: export_onnx\n    opset: 21\n  - kind: compress_weights\n    group_size: -1\n"
    from compress.recipe import load_recipe

    (recipe_dir / "ok.yaml").write_text(tiny_recipe_text(stages=stages))
    assert load_recipe(recipe_dir / "ok.yaml").stages[1].group_size == -1


def test_the_graph_itself_is_checked_at_run_time(llama_onnx, tmp_path):
    with pytest.raises(StageError, match="group_size: -1 at 4 bits needs int4 DequantizeLinear, opset 21; the graph "
                                         "is opset 18"):
        run_stage(llama_onnx(18), tmp_path / "a", backend="nncf", bits=4, group_size=-1)
    with pytest.raises(StageError) as info:
        run_stage(llama_onnx(18), tmp_path / "b", backend="onnxruntime", bits=4, group_size=64)
    assert "group_size: 64 does not divide the input size 32 of layer /model/layers.0/self_attn/q_proj/MatMul" \
        in str(info.value)


def test_calibration_feed_starts_an_empty_cache(llama_onnx):
    graph = onnx.load(str(llama_onnx(18).onnx_path))
    feed = empty_past_feed([5, 6, 7], graph_input_specs(graph))
    assert feed["input_ids"].tolist() == [[5, 6, 7]] and feed["position_ids"].tolist() == [[0, 1, 2]]
    assert feed["attention_mask"].tolist() == [[1, 1, 1]]
    past = sorted(k for k in feed if k.startswith("past_key_values."))
    assert len(past) == 4 and {feed[k].shape for k in past} == {(1, 2, 0, 8)}  # 2 layers x key/value, GQA 2 kv heads


# ---------------------------------------------------------------------------- an encoder, in a recipe


@pytest.mark.parametrize("stage, layers", [
    # NNCF: the 12 attention and FFN MatMuls (Q, K, V, output, FFN in, FFN out in 2 layers), the pooler and
    # classifier Gemms and the 3 embeddings (word, position, token type), all INT8
    ("  - kind: compress_weights\n    backend: nncf\n    bits: 8\n", {"int8": 12 + 2 + 3}),
    # ONNX Runtime: the 12 MatMuls; MatMulNBits takes no Gemm, so pooler and classifier stay float
    ("  - kind: compress_weights\n    backend: onnxruntime\n    group_size: 16\n", {"int4": 12}),
], ids=["nncf-int8", "ort-int4"])
def test_an_encoder_classifier_compresses_in_a_recipe(stage, layers, tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n" + stage)
    record, fp32 = stage_json(run_dir, "02-compress_weights"), stage_json(run_dir, "01-export_onnx")
    assert record["weight_compression"]["layers_by_bits"] == layers
    assert record["weight_compression"]["float_matmul_weights"] == 0
    assert record["size_bytes"] < fp32["size_bytes"]
    assert abs(record["accuracy"] - fp32["accuracy"]) <= 0.1  # 20 eval examples: at most 2 flips
