"""`optimize_onnx`: ONNX Runtime transformer graph fusion (Attention, SkipLayerNorm,
EmbedLayerNorm, BiasGelu; RMSNorm and rotary embeddings for decoders), checked against the
incoming graph on real inputs. Attention that ONNX Runtime's rules do not match becomes ONNX
Attention nodes: an encoder's with additive position biases (MPNet; encoder_attention.py), a
causal LM's with its KV cache, among other decoder rewrites (decoder_graph/); fused ops whose
CPU kernels are slower than their parts are written back as the parts (split_fused.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel, copy_sidecar_files
from compress.errors import StageError
from compress.stages.base import QuantizedParity, StageConfig
from compress.stages.optimize_onnx.split_fused import (
    SPLIT_ON_CPU,
    SPLITTABLE,
    split_fused_ops,
)

log = logging.getLogger(__name__)


FLOAT_ATOL = 1e-3


class OptimizeONNXStage(StageConfig, QuantizedParity):
    kind: Literal["optimize_onnx"]
    opt_level: Literal[0, 1, 2, 99] = Field(
        0,
        description="0: portable fusions only; 1/2/99 also bake ONNX Runtime's own graph optimizations "
        "into the file (tied to the ORT version and CPU).",
    )
    atol: float | None = Field(None, gt=0, description=(
        "Max |logit difference| allowed against the incoming graph (default: 1e-3 for a float graph; for a "
        "quantized one, where fusion moves float work between rounding points, parity_steps quantization steps "
        "read from the graph, with min_agreement)."))
    parity_samples: int = Field(128, ge=1)
    fuse_attention: bool = Field(True, description=(
        "Fuse self-attention into ORT's Attention op (fastest at batch 1, float inside); where ORT's rules do "
        "not match it (MPNet's position-biased attention), into ONNX Attention (opset 23) with the additive "
        "terms summed once per forward; for a causal LM, into ONNX Attention with the KV cache inside. false "
        "keeps it as MatMul/Softmax, so a later ptq with activation_matmuls: true runs attention in INT8 too "
        "(faster at large batches on CPU); the other fusions (SkipLayerNorm, BiasGelu, EmbedLayerNorm, RMSNorm, "
        "rotary) apply either way."))
    pack_projections: bool = Field(True, description=(
        "The projections that read the same input become one MatMul (and one bias Add) and a Split: a causal "
        "LM's q/k/v and gate/up, fewer and larger matrix products per generated token (bit-identical after "
        "compress_weights); an encoder's q/k/v where ORT's Attention op does not hold them (MPNet's ONNX "
        "Attention, or fuse_attention: false), one INT8 kernel instead of three after dynamic INT8 (the same "
        "numbers with per-channel scales)."))
    last_logits: bool = Field(True, description=(
        "Causal LMs: a logits_to_keep input (transformers' name) so a prompt's prefill runs the LM head on its "
        "last position only; evaluation feeds 0 (every position), the packaged runtime 1."))
    split_for_cpu: list[Literal[SPLITTABLE]] = Field(list(SPLIT_ON_CPU), description=(
        "Fused ops written back as their parts after fusion, because ONNX Runtime's CPU kernels for them are "
        "slower than the parts (SkipLayerNormalization 6.2x slower than Sum + LayerNormalization at "
        "(32, 40, 384), 1 thread, ORT 1.32: benchmarks/results/cpu-kernels/). [] keeps every fusion (for a "
        "GPU runtime: validate warns when the recipe's model is meant for one). A decoder's "
        "SkipSimplifiedLayerNormalization only when named: it gains at long prefills, not per decode step."))

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model: Artifact, ctx) -> ONNXModel:
        from compress.parity import check_parity

        criterion = self.criterion_for(model.onnx_path, self.atol, FLOAT_ATOL, "optimize_onnx atol")
        optimized, fusions, rules = optimize_onnx(model, ctx.artifact_dir, opt_level=self.opt_level,
                                                  fuse_attention=self.fuse_attention,
                                                  pack_projections=self.pack_projections,
                                                  last_logits=self.last_logits,
                                                  split=self.split_for_cpu)
        ctx.record(fused_ops=fusions, fusion_rules=rules)
        ctx.record(parity=check_parity(model, optimized, ctx, samples=self.parity_samples, **criterion))
        return optimized


def fusion_family(model_type: str | None, config_path: Path) -> tuple[str, str]:
    """(the onnxruntime.transformers fusion rules for a Hugging Face model_type, who said so):
    optimum's ORTConfigManager (the maintained table: mpnet, deberta, albert, ... -> bert), else a
    model_type ONNX Runtime's optimizer takes by its own name. StageError when neither knows it."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES
    from optimum.onnxruntime.utils import ORTConfigManager

    try:
        family = ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:  # not in optimum's table
        family = None
    if family in MODEL_TYPES:
        return family, "optimum ORTConfigManager"
    if model_type in MODEL_TYPES:
        return model_type, "onnxruntime.transformers"
    raise StageError(f"{config_path}: model_type {model_type!r} has no ONNX Runtime fusion rules (neither optimum's "
                     "ORTConfigManager nor onnxruntime.transformers.optimizer knows it): remove the optimize_onnx "
                     "stage (export_onnx's graph runs as it is)")


def optimize_onnx(model: ONNXModel, out_dir: Path, opt_level: int, fuse_attention: bool = True,
                  pack_projections: bool = True, last_logits: bool = True,
                  split: list[str] = ()) -> tuple[ONNXModel, dict[str, int], dict]:
    """The fused model, the fused operator counts, and which rules were used. `split`: fused
    op types written back as their parts afterwards (split_fused), counted as 'split <op>'."""
    from onnxruntime.transformers.optimizer import optimize_model

    from compress.progress import spinner

    cfg = json.loads((model.path / "config.json").read_text())
    family, source = fusion_family(cfg.get("model_type"), model.path / "config.json")
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(family)
    # DQ(int8 weight) → MatMul would become QOrderedMatMul, a CUDA-only op that CPU sessions reject.
    options.enable_qordered_matmul = False
    options.enable_attention = fuse_attention
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ONNXModel(out_dir)
    # ORT's optimizer reports no progress through its passes: a spinner says the step is alive
    with spinner(f"optimize_onnx: fusing ({family} rules)") as bar:
        optimized = optimize_model(
            str(model.onnx_path),
            model_type=family,
            num_heads=cfg.get("num_attention_heads", 0),
            hidden_size=cfg.get("hidden_size", 0),
            opt_level=opt_level,
            use_gpu=False,
            optimization_options=options,
        )
        rewritten = {}
        if _has_past_inputs(optimized.model):
            from compress.stages.optimize_onnx.decoder_graph import fuse_decoder

            bar.describe("optimize_onnx: fusing the decoder's attention and KV cache")
            rewritten = fuse_decoder(optimized.model, cfg, fuse_attention, last_logits)
        elif fuse_attention:  # what ORT's rules left unfused (MPNet's position-biased attention)
            from compress.stages.optimize_onnx.encoder_attention import (
                fuse_encoder_attention,
            )

            bar.describe("optimize_onnx: fusing the attention ORT's rules left")
            fused = fuse_encoder_attention(optimized.model)
            if fused:
                rewritten["Attention"] = fused  # ONNX Attention, as for decoders
        if pack_projections:  # ORT's own (com.microsoft) Attention holds its q/k/v packed already: nothing to group
            from compress.stages.optimize_onnx.projections import (
                pack_shared_input_matmuls,
            )

            packed = pack_shared_input_matmuls(optimized.model)
            if packed:
                rewritten["MatMul (packed projections)"] = len(packed)
        # counted before the split, which removes some of the fused ops again
        fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        fusions.update(rewritten)
        if split:
            fusions.update({f"split {op}": n for op, n in split_fused_ops(optimized.model, split).items()})
        bar.describe("optimize_onnx: saving the fused graph")
        optimized.save_model_to_file(str(result.onnx_path))
    copy_sidecar_files(model.path, out_dir)
    return result, fusions, {"model_type": cfg.get("model_type"), "rules": family, "from": source}


def _has_past_inputs(model) -> bool:
    """A decoder exported with its KV cache (optimum's text-generation-with-past)."""
    from compress.generation import PAST_PREFIX

    return any(i.name.startswith(PAST_PREFIX) for i in model.graph.input)
