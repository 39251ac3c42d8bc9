"""qat: NNCF quantization-aware training on the tiny model, exported as explicit Q/DQ ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compress.errors import RecipeError, StageError
from compress.recipe import load_recipe
from tests.conftest import tiny_recipe_text
from tests.helpers import manifest, recipe_error, run_tiny, stage_json

QAT = "\n  - kind: qat\n    max_steps: 3\n    batch_size: 8\n    calibration_samples: 8\n"


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def test_qat_exports_qdq_pairs_that_onnx_runtime_runs(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir,
                       QAT + "    distillation: {soft_target_weight: 0.5, label_weight: 0.5}\n")
    record = stage_json(run_dir, "01-qat")
    assert record["artifact"] == "onnx" and record["training"]["steps"] == 3
    assert record["qat"]["distillation"] == {"temperature": 2.0, "soft_target_weight": 0.5, "label_weight": 0.5,
                                             "hidden_weight": 0.0, "attention_weight": 0.0}
    parity = record["parity"]
    assert parity["passed"] and parity["label_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    from compress.onnx_graph import output_step

    step = output_step(run_dir / "01-qat" / "model.onnx")  # the classifier: Gemm on the pooled output
    assert step["logit_step"] > 0 and parity["atol"] == pytest.approx(2 * step["logit_step"])  # parity_steps 2
    assert parity["max_abs_diff_steps"] == pytest.approx(parity["max_abs_diff"] / step["logit_step"], abs=1e-4)
    assert record["tensorrt_qdq"]["ok"]  # performance preset: symmetric int8, zero points 0
    model = onnx.load(str(run_dir / "01-qat" / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    ops = [n.op_type for n in model.graph.node]
    # activations: Q/DQ pairs; weights (folded): DQ only
    assert "FakeQuantize" not in ops and 0 < ops.count("QuantizeLinear") < ops.count("DequantizeLinear")
    # every Linear: int8 initializer -> DQ -> MatMul/Gemm (folded weights, no Transpose between: ORT fuses it)
    inits = {t.name: t for t in model.graph.initializer}
    producers = _producers(model.graph)
    linear = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and
              producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
              and inits.get(producers[n.input[1]].input[0]) is not None
              and inits[producers[n.input[1]].input[0]].data_type == onnx.TensorProto.INT8]
    assert len(linear) == 2 * 6 + 2  # Q, K, V, attention output, FFN in, FFN out per layer; pooler; classifier
    assert record["qat"]["weights_folded"] >= 14
    assert record["int8_coverage"]["int8_matmul_nodes"] == 14


def test_qat_onnx_matches_the_torch_qat_model(tiny_classifier_dir):
    """The export path alone: ORT on the exported graph against the stripped torch model."""
    import nncf
    import onnxruntime as ort
    import torch

    from compress.models import load_model
    from compress.stages.qat import QATStage
    from compress.stages.qat.nncf_qat import (
        prepare_nncf_environment,
        quantize_with_nncf,
    )
    from compress.stages.qat.qdq_export import export_qdq_onnx

    prepare_nncf_environment()
    torch.manual_seed(0)
    net = load_model(tiny_classifier_dir)
    batches = [{"input_ids": torch.randint(1000, 3000, (1, 6 + i)), "attention_mask": torch.ones(1, 6 + i, dtype=torch.long),
                "token_type_ids": torch.zeros(1, 6 + i, dtype=torch.long)} for i in range(4)]
    qnet = quantize_with_nncf(net, batches, QATStage(kind="qat", per_channel=False))
    stripped = nncf.strip(qnet.eval(), do_copy=True, example_input=batches[0])
    path = tiny_classifier_dir.parent / "qat-direct.onnx"
    export_qdq_onnx(stripped, batches[0], path, opset=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = {"input_ids": torch.randint(1000, 3000, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
             "token_type_ids": torch.zeros(3, 9, dtype=torch.long)}  # another batch and length: dynamic axes
    with torch.no_grad():
        expected = stripped(**batch).logits.numpy()
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)

    from compress.stages.qat.qdq_export import activations_to_uint8

    shifted = path.with_name("qat-direct-uint8.onnx")
    shifted.write_bytes(path.read_bytes())
    assert activations_to_uint8(shifted) > 0
    zero_points = {t.name: t.data_type for t in onnx.load(str(shifted)).graph.initializer if t.name.endswith("_uint8")}
    assert zero_points and set(zero_points.values()) == {onnx.TensorProto.UINT8}
    u8 = ort.InferenceSession(str(shifted), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(u8.run(None, {k: v.numpy() for k, v in batch.items()})[0], got, atol=1e-5)  # exact

    from compress.stages.qat.qdq_export import fold_weight_quantization

    folded = path.with_name("qat-direct-folded.onnx")
    folded.write_bytes(path.read_bytes())
    assert fold_weight_quantization(folded) >= 14  # every Linear's weight
    assert folded.stat().st_size < path.stat().st_size / 2
    graph = onnx.load(str(folded)).graph
    weight_qs = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in {t.name for t in graph.initializer}]
    assert not weight_qs
    same = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(same.run(None, {k: v.numpy() for k, v in batch.items()})[0], got, atol=1e-5)
    with torch.no_grad():
        float_logits = net(**batch).logits.numpy()
    assert not np.allclose(got, float_logits, atol=1e-7)  # the quantizers really act

    from compress.stages.qat.qdq_export import gather_before_dequantize

    assert gather_before_dequantize(folded) >= 1  # the quantized word embeddings at least
    graph = onnx.load(str(folded)).graph
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert not [n for n in graph.node if n.op_type == "Gather" and n.input[0] in dq_outputs]
    gathered = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(gathered.run(None, {k: v.numpy() for k, v in batch.items()})[0],
                                  same.run(None, {k: v.numpy() for k, v in batch.items()})[0])


def test_mixed_preset_is_flagged_for_tensorrt(tmp_path, tiny_classifier_dir):
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, QAT + "    preset: mixed\n"), "01-qat")
    assert not record["tensorrt_qdq"]["ok"] and "asymmetric" in record["tensorrt_qdq"]["problems"][0]
    assert record["parity"]["max_abs_diff"] < 1e-3  # ORT still runs it


def test_uint8_activations_run_in_onnx_runtime_not_tensorrt(tmp_path, tiny_classifier_dir):
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, QAT + "    activation_type: uint8\n"), "01-qat")
    assert record["parity"]["max_abs_diff"] < 1e-3 and record["qat"]["activation_type"] == "uint8"
    assert not record["tensorrt_qdq"]["ok"] and "uint8" in record["tensorrt_qdq"]["problems"][0]


def test_qat_budget_miss_fails_with_the_numbers(tmp_path, tiny_classifier_dir, monkeypatch):
    import compress.stages.ptq.budget as quant_budget

    scores = iter([0.9, 0.5])  # the input model, then the INT8 model
    monkeypatch.setattr(quant_budget, "task_score", lambda *args: lambda outputs: next(scores))
    with pytest.raises(StageError, match=r"max_metric_drop 0.01 not reached.*scores 0.9000.*QAT INT8 model 0.5000"):
        run_tiny(tmp_path, tiny_classifier_dir, QAT + "    max_accuracy_drop: 0.01\n")


@pytest.mark.parametrize("fields, message", [
    ("checkpoint_every: 10", "stages[0]: checkpoint_every is not supported by qat"),
    ("preset: symmetric", "stages[0].preset: Input should be 'performance' or 'mixed'"),
    ("opset: 11", "stages[0].opset: Input should be greater than or equal to 13"),
    ("distillation: {temperature: 0}", "stages[0].distillation.temperature: Input should be greater than 0"),
    ("distillation: {soft_target_weight: -1}",
     "stages[0].distillation.soft_target_weight: Input should be greater than or equal to 0"),
    ("distillation: {hidden_weight: 1}", "stages[0].distillation: hidden_weight applies to distill only"),
    ("distillation: {label_weight: 0}", "stages[0].distillation: every loss weight is 0"),
    ("distill_weight: 0.7", ("stages[0]: qat: distill_weight 0.7 is now distillation.soft_target_weight 0.7 with "
                             "distillation.label_weight 0.3")),
    ("distill_weight: high", ("stages[0]: qat: distill_weight w is now distillation.soft_target_weight w with "
                              "distillation.label_weight 1-w")),
    ("temperature: 3", "stages[0]: qat: temperature is renamed to distillation.temperature"),
])
def test_bad_qat_configs_name_the_field(recipe_dir, fields, message):
    assert message in recipe_error(recipe_dir, tiny_recipe_text(stages=f"\n  - kind: qat\n    {fields}\n"))


def test_onnx_stages_follow_qat(tmp_path, tiny_classifier_dir):
    """optimize_onnx keeps the Q/DQ model's outputs within the quantized criterion (read from
    the QAT graph's scales) and its INT8 work; build_engine takes the QAT graph: TensorRT-ready
    Q/DQ, and without a GPU the stage is skipped with the reason, never faked."""
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, QAT + "  - kind: optimize_onnx\n  - kind: build_engine\n"
                       "    precision: int8\n")
    from compress.onnx_graph import count_int8_coverage, output_step
    from compress.trt_engine import check_qdq_for_tensorrt, trt_unavailable_reason

    qat, optimized = stage_json(run_dir, "01-qat"), stage_json(run_dir, "02-optimize_onnx")
    assert optimized["accuracy"] == qat["accuracy"]
    step = output_step(run_dir / "01-qat" / "model.onnx")
    parity = optimized["parity"]
    assert parity["atol"] == pytest.approx(2 * step["logit_step"]) and parity["atol_from"]["node"] == step["node"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["atol"] and parity["label_agreement"] >= 0.99
    assert parity["p99_abs_diff"] <= parity["max_abs_diff"] and parity["min_agreement"] == 0.99
    coverage = count_int8_coverage(run_dir / "02-optimize_onnx" / "model.onnx")
    assert coverage["int8_matmul_nodes"] == qat["int8_coverage"]["int8_matmul_nodes"]
    assert check_qdq_for_tensorrt(run_dir / "02-optimize_onnx" / "model.onnx") == []
    engine_stage = manifest(run_dir)["stages"][2]
    reason = trt_unavailable_reason()
    if reason is None:  # a GPU with TensorRT: the engine is built from the fused Q/DQ graph and checked
        assert engine_stage["status"] == "completed" and stage_json(run_dir, "03-build_engine")["parity"]["passed"]
    else:
        assert engine_stage["status"] == "skipped" and engine_stage["reason"] == reason
        assert manifest(run_dir)["final_artifact"] == {"kind": "onnx", "path": "02-optimize_onnx"}


def test_qat_needs_a_torch_model(recipe_dir):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages="\n  - kind: export_onnx\n  - kind: qat\n"))
    with pytest.raises(RecipeError, match=r"stages\[1\] \(qat\) takes a torch model but gets an ONNX model"):
        load_recipe(path)


def test_a_stale_extension_build_lock_is_cleared(tmp_path, monkeypatch):
    """torch's extension builder waits forever on the lock file of a killed build."""
    import os
    import time
    from pathlib import Path

    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    from compress.stages.qat.nncf_qat import STALE_LOCK_S, prepare_nncf_environment

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = Path(QuantizedFunctionsCPULoader.get_build_dir()) / "lock"
    assert lock.is_relative_to(tmp_path)
    lock.touch()
    prepare_nncf_environment()
    assert lock.exists()  # a build in progress keeps its lock
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    prepare_nncf_environment()
    assert not lock.exists()


def test_first_nncf_use_on_a_fresh_machine_builds_the_extension(tmp_path):
    """An empty extension cache: the C++ build takes 1-2 minutes on 2 busy cores, past
    NNCF's own 60 s load time-out; the stage's settings must let it finish."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from compress.stages.qat.nncf_qat import prepare_nncf_environment, quantize_with_nncf\n"
        "from compress.models import load_model\n"
        "from compress.stages.qat import QATStage\n"
        "prepare_nncf_environment()\n"
        f"net = load_model({str(tmp_path / 'model')!r})\n"
        "batch = {'input_ids': torch.randint(1000, 3000, (1, 8)), 'attention_mask': torch.ones(1, 8, dtype=torch.long)}\n"
        "qnet = quantize_with_nncf(net, [batch], QATStage(kind='qat'))\n"
        "qnet.train(); qnet(**batch).logits.sum().backward()\n"  # training runs the compiled kernels
        "print('ok')\n"
    )
    from compress.models import builtin_model_dir
    from tests.conftest import _tiny_bert

    _tiny_bert(tmp_path / "model", builtin_model_dir("minilm-l6"), classifier=True)
    env = {k: v for k, v in os.environ.items() if k != "NNCF_EXTENSION_LOAD_TIMEOUT"}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    assert any((tmp_path / "extensions").rglob("quantized_functions_cpu*.so"))
