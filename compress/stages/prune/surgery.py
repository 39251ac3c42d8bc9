"""Removing what the plan says from a BERT-style encoder or a llama-style decoder, and
unstructured masks.

Structured: whole layers from the layer list, then heads (an encoder's through transformers'
prune_heads, a decoder's KV groups row by row) and FFN neurons (prune_linear_layer), as
compress.blocks lays them out; the model is physically smaller. Per-layer FFN widths go into
config.json (FFN_WIDTHS_KEY) so that compress.models can rebuild the shapes.

Unstructured: gradual magnitude pruning (Zhu & Gupta's cubic schedule) of the encoder's
Linear weights through torch.nn.utils.prune masks, made permanent at the end. Imported by
the prune stage when it runs (it imports torch)."""

from __future__ import annotations

import logging

import torch

from compress.blocks import layout_of
from compress.models import FFN_WIDTHS_KEY, block_layers, keep_layers_
from compress.stages.prune.importance import PrunePlan

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- surgery


def apply_plan_(model, plan: PrunePlan) -> None:
    """Remove what the plan names, in place (indices refer to the input model): whole layers
    first, then heads and FFN neurons of the layers kept; config.json records the shapes."""
    layout = layout_of(model)
    kept = [i for i in range(len(layout.layers())) if i not in set(plan.layers)]
    if plan.layers:
        keep_layers_(model, kept)
    now = {old: new for new, old in enumerate(kept)}  # input index → index after the layers went
    heads = {now[i]: v for i, v in plan.heads.items() if i in now and v}
    if heads:
        layout.remove_heads_(heads)
    layers = layout.layers()
    for i, neurons in plan.ffn.items():
        if i not in now or not neurons:
            continue
        layer = layers[now[i]]
        drop = set(neurons)
        keep = torch.tensor([j for j in range(layout.ffn_width(layer)) if j not in drop], dtype=torch.long)
        layout.resize_ffn_(layer, keep)
    record_ffn_widths_(model)


def record_ffn_widths_(model) -> None:
    """Uniform FFN widths go into intermediate_size (a plain transformers checkpoint);
    non-uniform ones into FFN_WIDTHS_KEY, which compress.models reads back."""
    layout = layout_of(model)
    widths = [layout.ffn_width(layer) for layer in layout.layers()]
    if len(set(widths)) == 1:
        model.config.intermediate_size = widths[0]
        if hasattr(model.config, FFN_WIDTHS_KEY):
            delattr(model.config, FFN_WIDTHS_KEY)
    else:
        setattr(model.config, FFN_WIDTHS_KEY, widths)


# ---------------------------------------------------------------------------- unstructured


def cubic_sparsity(step: int, total: int, target: float, start: float = 0.0, end: float = 0.75) -> float:
    """Zhu & Gupta (2017): s_t = s_f · (1 − (1 − p)³), p the progress from start·total to
    end·total; fast pruning early while weights are redundant, slow near the target."""
    begin, finish = start * total, max(end * total, start * total + 1)
    progress = min(1.0, max(0.0, (step - begin) / (finish - begin)))
    return target * (1 - (1 - progress) ** 3)


def prunable_linears(model) -> list[tuple[torch.nn.Module, str]]:
    """The blocks' Linear weights (attention and FFN): embeddings and the head stay dense."""
    return [(m, "weight") for layer in block_layers(model) for m in layer.modules()
            if isinstance(m, torch.nn.Linear)]


def start_masks_(model) -> list[tuple[torch.nn.Module, str]]:
    """Attach all-ones masks (weight → weight_orig × weight_mask) before training starts, so the
    optimizer and any DDP wrapper see the parameters they will keep."""
    from torch.nn.utils import prune

    params = prunable_linears(model)
    for module, name in params:
        prune.identity(module, name)
    return params


def magnitude_prune_(params: list[tuple[torch.nn.Module, str]], sparsity: float, scope: str) -> None:
    """Masks so that `sparsity` of the weights are zero: the smallest |weights| across all
    params (global) or in each one (per_layer). Masks only grow: pruned weights stay pruned."""
    from torch.nn.utils import prune

    groups = [params] if scope == "global" else [[p] for p in params]
    for group in groups:
        total = sum(getattr(m, n + "_orig").numel() for m, n in group)
        pruned = sum(int((getattr(m, n + "_mask") == 0).sum()) for m, n in group)
        scores = {(m, n): getattr(m, n + "_orig").detach() for m, n in group}
        # torch's container applies `amount` to the weights still unpruned
        prune.global_unstructured(group, pruning_method=prune.L1Unstructured,
                                  importance_scores=scores, amount=max(0, round(sparsity * total) - pruned))


def finish_masks_(params: list[tuple[torch.nn.Module, str]]) -> None:
    """Make the masks permanent: plain weight tensors with zeros, no reparametrisation left."""
    from torch.nn.utils import prune

    for module, name in params:
        prune.remove(module, name)


def sparsity_of(params: list[tuple[torch.nn.Module, str]]) -> float:
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in params)
    return zeros / max(1, sum(getattr(m, n).numel() for m, n in params))
