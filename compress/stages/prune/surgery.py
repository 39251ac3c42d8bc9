"""Pruning for BERT-style encoders (BERT, MiniLM, MPNet).

Structured: Taylor importance (|Σ gradient × activation|, accumulated over train batches) of
every attention head, FFN neuron and layer, measured through gates of value 1 hooked onto
the heads' contexts (the input of the attention output projection), the FFN activations and each layer's residual update (the gradient of a
gate is exactly that sum). The least important units are then removed physically:
transformers' prune_heads for heads, prune_linear_layer for FFN neurons, and the layer list
for whole layers. Per-layer FFN widths go into config.json (FFN_WIDTHS_KEY) so that
compress.models can rebuild the shapes.

Unstructured: gradual magnitude pruning (Zhu & Gupta's cubic schedule) of the encoder's
Linear weights through torch.nn.utils.prune masks, made permanent at the end. Imported by
stages only when they run (it imports torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from compress.distillation import encoder_layers, keep_encoder_layers_, model_inputs
from compress.errors import StageError
from compress.models import FFN_WIDTHS_KEY, heads_output_projection, self_attention

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- importance


@dataclass
class Importance:
    heads: list[torch.Tensor]  # per layer, one score per remaining head
    ffn: list[torch.Tensor]  # per layer, one score per FFN neuron
    layers: torch.Tensor  # one score per layer
    batches: int = 0


def _gate_heads(gate: torch.Tensor, n_heads: int):
    """A forward pre-hook on the attention output projection, whose input is the heads'
    contexts side by side: the same place in BERT and MPNet blocks."""
    def hook(module, args):
        context = args[0]
        *lead, width = context.shape
        gated = (context.view(*lead, n_heads, width // n_heads) * gate[:, None]).view(*lead, width)
        return (gated, *args[1:])

    return hook


def _gate_ffn(gate: torch.Tensor):
    return lambda module, args, output: output * gate


def _gate_layer(gate: torch.Tensor):
    def hook(module, args, output):  # the block's output as input + gate × (its update)
        hidden_in, hidden_out = args[0], output[0]
        return (hidden_in + gate * (hidden_out - hidden_in), *output[1:])

    return hook


def taylor_importance(model, batches) -> Importance:
    """Score every head, FFN neuron and layer of `model` on labelled `batches` (dropout off,
    weights untouched). A unit whose output never reaches the loss scores exactly 0."""
    layers = encoder_layers(model)
    head_gates = [torch.ones(self_attention(layer).num_attention_heads, requires_grad=True) for layer in layers]
    ffn_gates = [torch.ones(layer.intermediate.dense.out_features, requires_grad=True) for layer in layers]
    layer_gates = [torch.ones((), requires_grad=True) for _ in layers]
    scores = Importance([torch.zeros_like(g) for g in head_gates], [torch.zeros_like(g) for g in ffn_gates],
                        torch.zeros(len(layers)))
    was_training, trainable = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # gradients reach the gates only
    handles = []
    try:
        for layer, hg, fg, lg in zip(layers, head_gates, ffn_gates, layer_gates):
            handles.append(heads_output_projection(layer).register_forward_pre_hook(_gate_heads(hg, len(hg))))
            handles.append(layer.intermediate.register_forward_hook(_gate_ffn(fg)))
            handles.append(layer.register_forward_hook(_gate_layer(lg)))
        for batch in batches:
            loss = torch.nn.functional.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])
            n = len(layers)
            grads = torch.autograd.grad(loss, [*head_gates, *ffn_gates, *layer_gates])
            for i in range(n):
                scores.heads[i] += grads[i].abs()
                scores.ffn[i] += grads[n + i].abs()
                scores.layers[i] += grads[2 * n + i].abs()
            scores.batches += 1
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(model.parameters(), trainable):
            p.requires_grad_(g)
        model.train(was_training)
    return scores


# ---------------------------------------------------------------------------- selection


@dataclass
class PrunePlan:
    layers: list[int]  # layers removed (indices in the input model)
    heads: dict[int, list[int]]  # layer (input index) → current head indices removed
    ffn: dict[int, list[int]]  # layer (input index) → neuron indices removed


def _lowest(scores: torch.Tensor, n: int) -> list[int]:
    return sorted(torch.argsort(scores, stable=True)[:n].tolist()) if n > 0 else []


def _per_layer(scores: list[torch.Tensor], fraction: float, layers: list[int]) -> dict[int, list[int]]:
    """The same share removed in every layer, at least one unit kept."""
    return {i: _lowest(scores[i], min(round(fraction * len(scores[i])), len(scores[i]) - 1)) for i in layers}


def _normalised(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Scores divided by their layer's L2 norm (Michel et al.), so that global ranking
    compares units by their share of the layer, not by gradient scale across depth."""
    return [s / s.norm().clamp_min(1e-12) for s in scores]


def _global(scores: list[torch.Tensor], fraction: float, layers: list[int]) -> dict[int, list[int]]:
    """The lowest units across all layers, at least one unit kept per layer."""
    norm = _normalised(scores)
    units = sorted(((float(norm[i][j]), i, j) for i in layers for j in range(len(norm[i]))))
    budget = round(fraction * len(units))
    removed: dict[int, list[int]] = {i: [] for i in layers}
    for _, i, j in units:
        if budget == 0:
            break
        if len(removed[i]) < len(scores[i]) - 1:
            removed[i].append(j)
            budget -= 1
    return {i: sorted(v) for i, v in removed.items()}


def plan_fractions(imp: Importance, heads: float, ffn: float, n_layers: int, scope: str) -> PrunePlan:
    """Remove the n_layers least important layers, then `heads` and `ffn` fractions of the
    heads and neurons of the layers that remain (per layer, or ranked globally)."""
    total = len(imp.ffn)
    if n_layers >= total:
        raise StageError(f"layers: {n_layers} would remove every layer of a {total}-layer model")
    dropped = _lowest(imp.layers, n_layers)
    kept = [i for i in range(total) if i not in dropped]
    select = _global if scope == "global" else _per_layer
    return PrunePlan(dropped, select(imp.heads, heads, kept) if heads else {},
                     select(imp.ffn, ffn, kept) if ffn else {})


def unit_costs(model) -> tuple[int, int]:
    """Parameters held by one attention head (Q, K, V rows with biases, output columns) and
    by one FFN neuron (a row with bias in, a column out)."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 4 * head_dim * cfg.hidden_size + 3 * head_dim, 2 * cfg.hidden_size + 1


def plan_budget(model, imp: Importance, max_parameters: int, heads: bool = True) -> PrunePlan:
    """Remove heads (unless heads=False) and neurons, least important per parameter first, until
    the model has at most max_parameters (layers are kept; at least one head and neuron per layer)."""
    now = sum(p.numel() for p in model.parameters())
    head_cost, neuron_cost = unit_costs(model)
    heads, ffn = _normalised(imp.heads), _normalised(imp.ffn)
    # both kinds on one scale (mean 1), then per parameter removed
    head_mean = torch.cat(heads).mean().clamp_min(1e-12)
    ffn_mean = torch.cat(ffn).mean().clamp_min(1e-12)
    units = [(float(s / head_mean) / head_cost, "heads", i, j, head_cost)
             for i, row in enumerate(heads) for j, s in enumerate(row)] if heads else []
    units += [(float(s / ffn_mean) / neuron_cost, "ffn", i, j, neuron_cost)
              for i, row in enumerate(ffn) for j, s in enumerate(row)]
    plan = PrunePlan([], {i: [] for i in range(len(heads))}, {i: [] for i in range(len(ffn))})
    sizes = {"heads": [len(r) for r in heads], "ffn": [len(r) for r in ffn]}
    for _, kind, i, j, cost in sorted(units):
        if now <= max_parameters:
            break
        chosen = getattr(plan, kind)[i]
        if len(chosen) < sizes[kind][i] - 1:
            chosen.append(j)
            now -= cost
    if now > max_parameters:
        raise StageError(f"max_parameters {max_parameters:,}: the smallest model keeping one head and one FFN "
                         f"neuron per layer still has {now:,} parameters")
    plan.heads = {i: sorted(v) for i, v in plan.heads.items() if v}
    plan.ffn = {i: sorted(v) for i, v in plan.ffn.items() if v}
    return plan


# ---------------------------------------------------------------------------- surgery


def apply_plan_(model, plan: PrunePlan) -> None:
    """Remove what the plan names, in place: heads and FFN neurons first (indices refer to the
    input model), then whole layers; config.json records the resulting shapes."""
    from transformers.pytorch_utils import prune_linear_layer

    layers = encoder_layers(model)
    n_heads = model.config.num_attention_heads
    heads_by_original = {}
    for i, current in plan.heads.items():
        if i in plan.layers:
            continue
        remaining = sorted(set(range(n_heads)) - set(layers[i].attention.pruned_heads))
        heads_by_original[i] = [remaining[h] for h in current]  # prune_heads takes original head ids
    if heads_by_original:
        model.prune_heads(heads_by_original)
    for i, neurons in plan.ffn.items():
        if i in plan.layers or not neurons:
            continue
        layer = layers[i]
        width = layer.intermediate.dense.out_features
        keep = torch.tensor([j for j in range(width) if j not in set(neurons)], dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    if plan.layers:
        keep_encoder_layers_(model, [i for i in range(len(layers)) if i not in plan.layers])
    record_ffn_widths_(model)


def record_ffn_widths_(model) -> None:
    """Uniform FFN widths go into intermediate_size (a plain transformers checkpoint);
    non-uniform ones into FFN_WIDTHS_KEY, which compress.models reads back."""
    widths = [layer.intermediate.dense.out_features for layer in encoder_layers(model)]
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
    """The encoder's Linear weights (attention and FFN): embeddings and the classifier stay dense."""
    return [(m, "weight") for layer in encoder_layers(model) for m in layer.modules()
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
