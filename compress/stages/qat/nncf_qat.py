"""The qat stage's work: NNCF set-up that survives a fresh machine, calibration,
training through the shared loop on the distillation objective (the float input model as
teacher), strip, Q/DQ export, parity against the torch QAT model and the accuracy-budget check."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.artifacts import ONNXModel, TorchModel, copy_sidecar_files
from compress.errors import StageError

if TYPE_CHECKING:
    from compress.stages.qat import QATStage

log = logging.getLogger(__name__)

# NNCF JIT-compiles a C++ extension on first use (45-60 s on 2 cores) under a 60 s load
# time-out: a first run on a fresh machine would fail. A compiler error already falls back
# to NNCF's pure-torch functions; the time-out does not, so it is raised here.
EXTENSION_LOAD_TIMEOUT_S = "900"
STALE_LOCK_S = 20 * 60  # a build holding the lock longer than this was killed


def prepare_nncf_environment() -> None:
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry: nothing beyond the package registries is reachable
    try:
        from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader
    except ImportError:  # layout of another NNCF version: nothing to clean
        return
    lock = Path(QuantizedFunctionsCPULoader.get_build_dir()) / "lock"
    # torch's extension builder waits forever on a lock file left by a killed build
    if lock.is_file() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        log.warning("removing a stale NNCF extension build lock %s", lock)
        lock.unlink(missing_ok=True)


def quantize_with_nncf(net, batches: list[dict], stage: QATStage):
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    preset = nncf.QuantizationPreset.PERFORMANCE if stage.preset == "performance" else nncf.QuantizationPreset.MIXED
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=stage.per_channel))
    try:
        return nncf.quantize(net, nncf.Dataset(batches), preset=preset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(batches), advanced_parameters=advanced)
    except Exception as e:
        if type(e).__name__ == "ExtensionLoaderTimeoutException":
            raise StageError(f"NNCF's C++ extension did not build in time: {str(e).splitlines()[0]} "
                             f"(raise NNCF_EXTENSION_LOAD_TIMEOUT or clear the build directory)") from e
        raise


class _TorchOutputs:
    """A Session over an in-memory torch model, for predict_outputs."""

    def __init__(self, net, task, input_names: list[str], pad_id: int):
        self.net, self.task, self.input_names, self.pad_id = net, task, input_names, pad_id

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        from compress.tasks import torch_outputs

        with torch.no_grad():
            return torch_outputs(self.net(**{k: torch.from_numpy(v) for k, v in batch.items()}), self.task).numpy()


def run_qat(stage: QATStage, model: TorchModel, ctx) -> ONNXModel:
    from compress.distillation import DistillationModule, make_loss_fn, model_inputs
    from compress.evaluate import predict_outputs
    from compress.onnx_graph import count_int8_coverage
    from compress.parity import (
        compare_outputs,
        describe_agreement,
        judge,
        quantized_criterion,
    )
    from compress.sessions import ORTSession
    from compress.stages.qat.qdq_export import (
        activations_to_uint8,
        export_qdq_onnx,
        fold_weight_quantization,
        gather_before_dequantize,
    )
    from compress.training import (
        TaskEval,
        make_accelerator,
        tokenized_train_split,
        train_loop,
    )
    from compress.trt_engine import check_qdq_for_tensorrt

    prepare_nncf_environment()
    seed = stage.start(ctx)
    net = ctx.task.load_model(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
    tokenizer, collate, train, validation = tokenized_train_split(model.path, ctx, stage, seed)

    calibration = [model_inputs(collate([e])) for e in train[: stage.calibration_samples]]
    started = time.perf_counter()
    qnet = quantize_with_nncf(net, calibration, stage)
    calibrated_s = time.perf_counter() - started
    accelerator = make_accelerator(stage)
    objective = stage.distillation
    teacher = None
    if objective.needs_teacher:
        teacher = ctx.task.load_model(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
        teacher.to(accelerator.device).eval().requires_grad_(False)
    result = train_loop(
        DistillationModule(qnet, objective, ctx.task), train, collate, stage,
        make_loss_fn(teacher, objective, ctx.task),
        eval_fn=TaskEval(ctx.task, *validation, collate, forward=lambda m: m.student,
                             metric=ctx.metric) if validation else None,
        checkpoint_dir=None, resume_key=ctx.fingerprint, seed=seed, desc="qat", accelerator=accelerator,
    )
    if not ctx.main_process:  # rank 0 alone exports and checks the trained model
        return model
    import nncf

    example = model_inputs(collate(train[:2]))
    stripped = nncf.strip(result.model.student.eval(), do_copy=True, example_input=example)
    out = ONNXModel(ctx.artifact_dir)
    ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
    input_names = export_qdq_onnx(stripped, example, out.onnx_path, stage.opset, ctx.task.output_names)
    if stage.activation_type == "uint8":
        activations_to_uint8(out.onnx_path)
    weights_folded = fold_weight_quantization(out.onnx_path) if stage.fold_weights else 0
    lookups_rewritten = gather_before_dequantize(out.onnx_path) if weights_folded else 0
    copy_sidecar_files(model.path, ctx.artifact_dir)
    tokenizer.save_pretrained(ctx.artifact_dir)

    encoded = ctx.encoded_eval(out, stage.parity_samples)
    pad_id = tokenizer.pad_token_id or 0
    torch_logits = predict_outputs(_TorchOutputs(stripped, ctx.task, input_names, pad_id), encoded, 16,
                                   "parity (torch qat)")
    onnx_logits = predict_outputs(ORTSession(out, ctx.measure.threads), encoded, 16, "parity (onnx qat)")
    if stage.atol is not None:
        criterion = {"atol": stage.atol, "min_agreement": stage.min_agreement}
    else:
        criterion = quantized_criterion(out.onnx_path, stage.parity_steps, stage.min_agreement, "qat atol")
    parity = {**judge(compare_outputs(torch_logits, onnx_logits, ctx.task, encoded), **criterion),
              "examples": len(encoded)}
    problems = check_qdq_for_tensorrt(out.onnx_path)
    ctx.record(
        qat={"preset": stage.preset, "per_channel": stage.per_channel, "activation_type": stage.activation_type,
             "calibration_samples": len(calibration),
             "calibration_seconds": round(calibrated_s, 1), "distillation": objective.model_dump(),
             "weights_folded": weights_folded,
             "embedding_lookups_gathered_before_dequantize": lookups_rewritten},
        training=result.record(stage.batch_size, stage.gradient_accumulation_steps, seed),
        parity=parity, int8_coverage=count_int8_coverage(out.onnx_path),
        tensorrt_qdq={"ok": not problems, "problems": problems[:5], "problem_count": len(problems)},
    )
    if not parity["passed"]:
        raise StageError(f"qat export parity failed: {parity['failure']} between the torch QAT model and ONNX "
                         f"on {len(encoded)} eval examples ({describe_agreement(parity)})")
    if stage.max_metric_drop is not None:
        _check_budget(stage, model, out, ctx)
    return out


def _check_budget(stage: QATStage, model: TorchModel, quantized: ONNXModel, ctx) -> None:
    from compress.evaluate import predict_outputs
    from compress.sessions import ORTSession, TorchSession
    from compress.stages.ptq.budget import EPSILON, task_score

    encoded, references = ctx.eval_set.head(quantized, stage.budget_samples)
    score = task_score(ctx.task, encoded, references, ctx.metric)
    batch = ctx.measure.eval_batch_size
    reference = score(predict_outputs(TorchSession(model, ctx.measure.threads), encoded, batch))
    reached = score(predict_outputs(ORTSession(quantized, ctx.measure.threads), encoded, batch))
    met = reference - reached <= stage.max_metric_drop + EPSILON
    ctx.record(accuracy_budget={"metric": ctx.metric, "max_accuracy_drop": stage.max_metric_drop,
                                "slice_examples": len(references),
                                "reference_accuracy": round(reference, 5), "quantized_accuracy": round(reached, 5),
                                "drop": round(reference - reached, 5), "met": met})
    if not met:
        raise StageError(f"max_metric_drop {stage.max_metric_drop:g} not reached: the input model scores "
                         f"{reference:.4f} on the {len(references)}-example budget slice and the QAT INT8 model "
                         f"{reached:.4f}; train longer, add distillation.soft_target_weight, or raise "
                         "max_metric_drop")
