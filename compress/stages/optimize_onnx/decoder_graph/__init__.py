"""A causal LM's own graph rewrites, which ONNX Runtime's transformer rules leave undone:
attention with its KV cache into ONNX Attention (attention.py) and a `logits_to_keep` input so
a prefill computes the head for the last position only (logits.py). optimize_onnx runs them on
any graph with past key/values (and packs the projections that read one input, decoder or
not: ../projections.py)."""

from __future__ import annotations


def fuse_decoder(model, config: dict, attention: bool, last_logits: bool) -> dict[str, int]:
    """Rewrite `model` (an onnx.ModelProto) in place; counts of what was rewritten."""
    from compress.stages.optimize_onnx.decoder_graph.attention import (
        fuse_decoder_attention,
    )
    from compress.stages.optimize_onnx.decoder_graph.logits import (
        LOGITS_TO_KEEP,
        add_logits_to_keep,
    )

    done = {}
    if attention:
        heads = config.get("num_attention_heads", 0)
        done.update(fuse_decoder_attention(model, heads, config.get("num_key_value_heads") or heads))
    if last_logits and add_logits_to_keep(model):
        done[f"input {LOGITS_TO_KEEP}"] = 1
    return done
