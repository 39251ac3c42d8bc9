"""Which units of a BERT-style encoder (BERT, MiniLM, MPNet) or a llama-style decoder matter:
Taylor importance (|Σ gradient × activation|, accumulated over train batches) of every
attention head (a decoder's: every KV group), FFN neuron and layer, measured through gates of
value 1 hooked onto the heads' contexts (the input of the attention output projection), the
FFN activations (the input of the FFN's output projection: after a gated MLP's product) and
each layer's residual update (the gradient of a gate is exactly that sum); then the plan of
what to remove, to target fractions or a parameter budget. Imported by the prune stage when
it runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from compress.blocks import layout_of
from compress.errors import StageError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- importance


@dataclass
class Importance:
    heads: list[torch.Tensor]  # per layer, one score per remaining head
    ffn: list[torch.Tensor]  # per layer, one score per FFN neuron
    layers: torch.Tensor  # one score per layer
    batches: int = 0

    def summed_over_ranks(self) -> Importance:
        """The scores of every rank's batches added up (each rank scored its own shard), the
        same on every rank, so every rank removes the same units."""
        from compress.distributed import sum_across_ranks

        counts = torch.tensor([float(self.batches)])
        sum_across_ranks([*self.heads, *self.ffn, self.layers, counts])
        self.batches = int(counts.item())
        return self


def _gate_heads(gate: torch.Tensor, n_heads: int):
    """A forward pre-hook on the attention output projection, whose input is the heads'
    contexts side by side (in a decoder, a KV group's query heads are next to each other)."""
    def hook(module, args):
        context = args[0]
        *lead, width = context.shape
        gated = (context.view(*lead, n_heads, width // n_heads) * gate[:, None]).view(*lead, width)
        return (gated, *args[1:])

    return hook


def _gate_ffn(gate: torch.Tensor):
    """A forward pre-hook on the FFN's output projection: its input is the neurons' activations."""
    return lambda module, args: (args[0] * gate, *args[1:])


def _gate_layer(gate: torch.Tensor):
    def hook(module, args, kwargs, output):  # the block's output as input + gate × (its update)
        hidden_in = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, torch.Tensor):  # llama blocks return a tensor in transformers >= 4.56
            return hidden_in + gate * (output - hidden_in)
        return (hidden_in + gate * (output[0] - hidden_in), *output[1:])

    return hook


def taylor_importance(model, batches) -> Importance:
    """Score every head, FFN neuron and layer of `model` on labelled `batches` (dropout off,
    weights untouched). A unit whose output never reaches the loss scores exactly 0."""
    layout = layout_of(model)
    layers = layout.layers()
    head_gates = [torch.ones(layout.head_units(layer), requires_grad=True) for layer in layers]
    ffn_gates = [torch.ones(layout.ffn_width(layer), requires_grad=True) for layer in layers]
    layer_gates = [torch.ones((), requires_grad=True) for _ in layers]
    scores = Importance([torch.zeros_like(g) for g in head_gates], [torch.zeros_like(g) for g in ffn_gates],
                        torch.zeros(len(layers)))
    was_training, trainable = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # gradients reach the gates only
    handles = []
    try:
        for layer, hg, fg, lg in zip(layers, head_gates, ffn_gates, layer_gates):
            handles.append(layout.heads_projection(layer).register_forward_pre_hook(_gate_heads(hg, len(hg))))
            handles.append(layout.ffn_linears(layer)[1].register_forward_pre_hook(_gate_ffn(fg)))
            handles.append(layer.register_forward_hook(_gate_layer(lg), with_kwargs=True))
        for batch in batches:
            loss = model(**batch).loss  # the task's own loss on its targets (labels, answer positions)
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


def _uniform(scores: list[torch.Tensor], fraction: float, layers: list[int]) -> dict[int, list[int]]:
    """The same number of units from every layer (a decoder's KV groups), each layer's least
    important ones; a fraction that rounds to no unit is refused rather than ignored."""
    units = len(scores[layers[0]])
    n = min(round(fraction * units), units - 1)
    if n == 0:
        raise StageError(f"heads: {fraction} of {units} KV groups per layer removes none; a decoder loses whole "
                         f"KV groups, the same number in every layer (one group is {1 / units:.3g} of them)")
    return {i: _lowest(scores[i], n) for i in layers}


def plan_fractions(imp: Importance, heads: float, ffn: float, n_layers: int, scope: str,
                   uniform_heads: bool = False) -> PrunePlan:
    """Remove the n_layers least important layers, then `heads` and `ffn` fractions of the
    heads and neurons of the layers that remain (per layer, or ranked globally; a decoder's
    heads, with uniform_heads, the same number in every layer whatever the scope)."""
    total = len(imp.ffn)
    if n_layers >= total:
        raise StageError(f"layers: {n_layers} would remove every layer of a {total}-layer model")
    dropped = _lowest(imp.layers, n_layers)
    kept = [i for i in range(total) if i not in dropped]
    select = _global if scope == "global" else _per_layer
    select_heads = _uniform if uniform_heads else select
    return PrunePlan(dropped, select_heads(imp.heads, heads, kept) if heads else {},
                     select(imp.ffn, ffn, kept) if ffn else {})


def unit_costs(model, heads: bool = True) -> tuple[int, int]:
    """Parameters held by one attention head (Q, K, V rows with biases, output columns; 0 when
    heads are not budgeted) and by one FFN neuron (a row of each input Linear, a column out)."""
    layout = layout_of(model)
    return layout.head_cost() if heads else 0, layout.neuron_cost()


def plan_budget(model, imp: Importance, max_parameters: int, heads: bool = True) -> PrunePlan:
    """Remove heads (unless heads=False) and neurons, least important per parameter first, until
    the model has at most max_parameters (layers are kept; at least one head and neuron per layer)."""
    now = sum(p.numel() for p in model.parameters())
    head_cost, neuron_cost = unit_costs(model, heads)
    head_scores, ffn = _normalised(imp.heads), _normalised(imp.ffn)
    # both kinds on one scale (mean 1), then per parameter removed
    head_mean = torch.cat(head_scores).mean().clamp_min(1e-12)
    ffn_mean = torch.cat(ffn).mean().clamp_min(1e-12)
    units = [(float(s / head_mean) / head_cost, "heads", i, j, head_cost)
             for i, row in enumerate(head_scores) for j, s in enumerate(row)] if heads else []
    units += [(float(s / ffn_mean) / neuron_cost, "ffn", i, j, neuron_cost)
              for i, row in enumerate(ffn) for j, s in enumerate(row)]
    plan = PrunePlan([], {i: [] for i in range(len(head_scores))}, {i: [] for i in range(len(ffn))})
    sizes = {"heads": [len(r) for r in head_scores], "ffn": [len(r) for r in ffn]}
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
