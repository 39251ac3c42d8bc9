"""Settings that validate but are known to make a slow artifact on the recipe's own target:
one line each, naming the field, printed by `compress validate` and `compress run`.
Light (no torch, no onnxruntime): validate imports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.bench.targets import TARGETS

if TYPE_CHECKING:
    from compress.recipe import Recipe

# Measured: an 8-class news set, 128-token texts, 2 threads on an AVX512-VNNI CPU; README
# "Quantization" and benchmarks/results/quantization/s8s8_kernels.json give the kernel reason.
S8S8_REASON = ("ONNX Runtime's x86 CPU kernels run U8S8 (uint8 activations, int8 weights) through VNNI, while "
               "S8S8 Q/DQ falls back to slower paths: static INT8 with int8 activations ran slower than the fused "
               "fp32 model it came from (23.3 vs 20.8 ms batch-1 p50, 8-class news, 128 tokens, 2 threads, "
               "AVX512-VNNI)")

# Measured: SmolLM2-135M decode at batch 1, 2 threads, AVX512-VNNI (benchmarks/results/causal-lm/generation/)
HQQ_REASON = ("ONNX Runtime's HQQ writes float zero points and no accuracy_level, which sends MatMulNBits down a "
              "dequantize-then-multiply path: SmolLM2-135M decoded 5.3 tokens/s with HQQ 4-bit weights against "
              "71.7 with RTN 8-bit blocks and int8 compute on the same graph (batch 1, 2 threads, AVX512-VNNI)")


def runs_on_cpu(recipe: Recipe, index: int) -> bool:
    """Whether stage `index`'s ONNX model is meant for a CPU runtime: no later stage builds a
    TensorRT engine from it, and a select block, if any, picks for a CPU target."""
    if any(s.kind == "build_engine" for s in recipe.stages[index + 1:]):
        return False
    return recipe.select is None or TARGETS[recipe.select.target].device == "cpu"


def recipe_warnings(recipe: Recipe) -> list[str]:
    """The recipe's known-slow settings, one line each: 'FIELD: what and why'."""
    lines = []
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "ptq" and stage.mode == "static" and stage.activation_type == "int8" and runs_on_cpu(recipe, i):
            default = "" if "activation_type" in stage.model_fields_set else " (the default)"
            lines.append(f"stages[{i}].activation_type: int8{default} with mode: static makes S8S8 Q/DQ, slow on "
                         f"this recipe's CPU target: {S8S8_REASON}; set activation_type: uint8 (int8 is for "
                         "TensorRT)")
        if stage.kind == "optimize_onnx" and stage.split_for_cpu and not runs_on_cpu(recipe, i):
            lines.append(f"stages[{i}].split_for_cpu: {', '.join(stage.split_for_cpu)} are written back as their "
                         "parts for ONNX Runtime's CPU kernels, but this recipe's model is meant for a GPU (a later "
                         "build_engine or a select target on CUDA), where the fused kernels are the fast ones; set "
                         "split_for_cpu: []")
        if stage.kind == "compress_weights" and stage.method == "hqq" and runs_on_cpu(recipe, i):
            lines.append(f"stages[{i}].method: hqq makes a slow model on this recipe's CPU target: {HQQ_REASON}; "
                         "method: rtn with accuracy_level: 4 runs the fast int8 kernels")
    return lines
