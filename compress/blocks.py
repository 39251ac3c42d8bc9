"""Where the parts of a transformer block live, for the stages that cut blocks apart (distill's
layer subsets, prune's heads, FFN neurons and layers). Two layouts:

- encoder: BERT-style (BERT, MiniLM, MPNet): base_model.encoder.layer, heads removed one by one
  through transformers' prune_heads (config.pruned_heads records them per layer);
- decoder: llama-style (llama, SmolLM2, Qwen2, Mistral): base_model.layers,
  self_attn.{q,k,v,o}_proj with grouped-query attention, a gated MLP mlp.{gate,up,down}_proj.
  A head unit is a KV group (one key/value head and the query heads that share it), and every
  layer keeps the same number of groups: the KV cache layout (and optimum's export with past
  key/values) reads one num_key_value_heads from the config.

layout_of(model) picks one; nothing else in the code base names a block's sub-modules. No
torch import at module level (compress.models, which imports this, stays light)."""

from __future__ import annotations

from compress.errors import StageError

SUPPORTED = ("only BERT-style encoders (base_model.encoder.layer) and llama-style decoders (model.layers with "
             "self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj) can be distilled by layer or pruned")


def _prune_linear(linear, keep, dim: int):
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(linear, keep, dim=dim)


class BlockLayout:
    """What both layouts answer alike; each subclass names its own modules."""

    kind: str
    layer_names: str  # the regular expression of a block's parameter names, group 1 its index
    uniform_heads: bool  # every layer must keep the same number of head units

    def __init__(self, model):
        self.model = model

    def ffn_width(self, layer) -> int:
        return self.ffn_linears(layer)[1].in_features

    def heads_refusal(self) -> str | None:
        """Why this model's head units cannot be removed, or None. (MPNet's can: its shared
        position bias is handed to each layer for the heads it kept, fit_position_bias_.)"""
        return None

    def neuron_cost(self) -> int:
        """Parameters one FFN neuron holds: a row (with bias) of each input Linear, a column out."""
        rows, out = self.ffn_linears(self.layers()[0])
        return sum(lin.in_features + (lin.bias is not None) for lin in rows) + out.out_features


class EncoderLayout(BlockLayout):
    """BERT-style encoder blocks (BERT, MiniLM; MPNet keeps its heads in attention.attn)."""

    kind = "encoder"
    layer_names = r"encoder\.layer\.(\d+)\."
    uniform_heads = False  # each layer may keep its own number of heads (config.pruned_heads)

    def layers(self):
        return self.model.base_model.encoder.layer

    def set_layers_(self, modules: list) -> None:
        import torch

        self.model.base_model.encoder.layer = torch.nn.ModuleList(modules)

    def reindex_config_(self, keep: list[int]) -> None:
        cfg = self.model.config
        pruned = {int(k): v for k, v in (cfg.pruned_heads or {}).items()}
        cfg.pruned_heads = {new: pruned[old] for new, old in enumerate(keep) if pruned.get(old)}

    # --- attention

    @staticmethod
    def self_attention(layer):
        """The module holding the heads: `attention.self` (BERT), `attention.attn` (MPNet)."""
        attention = layer.attention
        return attention.self if hasattr(attention, "self") else attention.attn

    def heads_projection(self, layer):
        """The Linear whose input is the heads' contexts side by side: BERT's
        attention.output.dense, MPNet's attention.attn.o."""
        attention = layer.attention
        return attention.output.dense if hasattr(attention, "output") else attention.attn.o

    def head_units(self, layer) -> int:
        return self.self_attention(layer).num_attention_heads

    def remove_heads_(self, removed: dict[int, list[int]]) -> None:
        """removed: layer → indices among its current heads (prune_heads takes original ids)."""
        layers, n_heads = self.layers(), self.model.config.num_attention_heads
        original = {}
        for i, current in removed.items():
            remaining = sorted(set(range(n_heads)) - set(layers[i].attention.pruned_heads))
            original[i] = [remaining[h] for h in current]
        self.model.prune_heads(original)
        fit_position_bias_(self.model)

    def head_cost(self) -> int:
        """Q, K, V rows with biases and output-projection columns of one head."""
        cfg = self.model.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        return 4 * head_dim * cfg.hidden_size + 3 * head_dim

    # --- FFN

    def ffn_linears(self, layer):
        """(the Linears whose output rows are the FFN neurons, the Linear whose input columns are)."""
        return [layer.intermediate.dense], layer.output.dense

    def resize_ffn_(self, layer, keep) -> None:
        layer.intermediate.dense = _prune_linear(layer.intermediate.dense, keep, 0)
        layer.output.dense = _prune_linear(layer.output.dense, keep, 1)

    def structure(self) -> dict:
        return {
            "layers": len(self.layers()),
            "hidden_size": self.model.config.hidden_size,
            "heads_per_layer": [self.head_units(layer) for layer in self.layers()],
            "ffn_per_layer": [self.ffn_width(layer) for layer in self.layers()],
        }


def fit_position_bias_(model) -> None:
    """MPNet's encoder computes one relative position bias for all the model's heads and hands
    it to every layer; a layer whose heads were pruned (config.pruned_heads, re-applied by
    transformers on load) must take the bias of the heads it kept. A forward pre-hook on each
    such layer's attention selects them, so the model stays transformers' own class and its
    checkpoint a plain one; compress.models.load_model calls this on every model it loads."""
    import torch

    encoder = getattr(model.base_model, "encoder", None)
    if encoder is None or not hasattr(encoder, "relative_attention_bias"):
        return
    n_heads = model.config.num_attention_heads
    for layer in encoder.layer:
        attention = layer.attention
        if not attention.pruned_heads:
            continue
        kept = [h for h in range(n_heads) if h not in attention.pruned_heads]
        # a buffer, not a tensor built in the hook: a constant of the ONNX trace without a warning
        device = encoder.relative_attention_bias.weight.device
        attention.register_buffer("kept_heads", torch.tensor(kept, device=device), persistent=False)
        if not getattr(attention, "_fits_position_bias", False):
            attention.register_forward_pre_hook(_position_bias_of_kept_heads, with_kwargs=True)
            attention._fits_position_bias = True


def _position_bias_of_kept_heads(attention, args: tuple, kwargs: dict):
    """MPNetAttention(hidden_states, attention_mask, head_mask, position_bias=...): the bias's
    head axis cut to the heads this layer kept (a module-level function: deepcopy keeps it)."""
    positional = len(args) > 3
    bias = args[3] if positional else kwargs.get("position_bias")
    if bias is None or bias.shape[1] == len(attention.kept_heads):
        return None
    bias = bias.index_select(1, attention.kept_heads)
    if positional:
        return (*args[:3], bias, *args[4:]), kwargs
    return args, {**kwargs, "position_bias": bias}


class DecoderLayout(BlockLayout):
    """llama-style decoder blocks with grouped-query attention and a gated MLP."""

    kind = "decoder"
    layer_names = r"(?<![a-z_])layers\.(\d+)\."
    uniform_heads = True  # one num_key_value_heads for every layer: the KV cache layout reads it

    def layers(self):
        return self.model.base_model.layers

    def set_layers_(self, modules: list) -> None:
        import torch

        self.model.base_model.layers = torch.nn.ModuleList(modules)
        for i, layer in enumerate(modules):  # the KV cache is indexed by each attention's layer_idx
            layer.self_attn.layer_idx = i

    def reindex_config_(self, keep: list[int]) -> None:
        cfg = self.model.config
        if getattr(cfg, "layer_types", None):  # sliding or full attention per layer (Qwen2, Mistral, ...)
            cfg.layer_types = [cfg.layer_types[i] for i in keep]

    # --- attention: a head unit is a KV group

    def heads_projection(self, layer):
        return layer.self_attn.o_proj

    def head_units(self, layer) -> int:
        attention = layer.self_attn
        return attention.k_proj.out_features // attention.head_dim

    def heads_refusal(self) -> str | None:
        cfg = self.model.config
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        if kv_heads < 2:
            return (f"has {kv_heads} key/value head per layer: a head unit of a decoder is a KV group, and removing "
                    "its only group would remove all attention; prune ffn and layers")
        attention = self.layers()[0].self_attn
        across = {attention.q_proj.out_features, attention.k_proj.out_features} - {attention.head_dim}
        for name, module in attention.named_children():  # e.g. OLMo2's q_norm over the whole projection
            weight = getattr(module, "weight", None)
            if not name.endswith("_proj") and weight is not None and weight.numel() in across:
                return (f"normalises across all heads ({name} spans the whole projection), so KV groups cannot be "
                        "cut out of it; prune ffn and layers")
        return None

    def remove_heads_(self, removed: dict[int, list[int]]) -> None:
        """removed: layer → KV groups removed, the same number in every layer (which groups is
        each layer's own choice). Query rows of a group are contiguous: key/value head g serves
        query heads g·r … g·r + r - 1 (r = heads per group)."""
        import torch

        layers = self.layers()
        counts = {len(removed.get(i, [])) for i in range(len(layers))}
        if len(counts) != 1:
            raise StageError("prune.heads: a decoder must lose the same number of KV groups in every layer "
                             f"(the plan removes {sorted(counts)})")
        for i, groups in removed.items():
            attention = layers[i].self_attn
            dim, per_group = attention.head_dim, attention.num_key_value_groups
            kept = [g for g in range(self.head_units(layers[i])) if g not in set(groups)]
            kv_rows = torch.cat([torch.arange(g * dim, (g + 1) * dim) for g in kept])
            q_rows = torch.cat([torch.arange(g * per_group * dim, (g + 1) * per_group * dim) for g in kept])
            attention.q_proj = _prune_linear(attention.q_proj, q_rows, 0)
            attention.k_proj = _prune_linear(attention.k_proj, kv_rows, 0)
            attention.v_proj = _prune_linear(attention.v_proj, kv_rows, 0)
            attention.o_proj = _prune_linear(attention.o_proj, q_rows, 1)
        first = layers[0].self_attn
        cfg = self.model.config
        cfg.head_dim = first.head_dim  # explicit: hidden_size // num_attention_heads no longer gives it
        cfg.num_key_value_heads = self.head_units(layers[0])
        cfg.num_attention_heads = cfg.num_key_value_heads * first.num_key_value_groups

    def head_cost(self) -> int:
        raise StageError("a decoder's KV groups are removed uniformly, not within a parameter budget")

    # --- FFN: gate and up rows, down columns

    def ffn_linears(self, layer):
        return [layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj

    def resize_ffn_(self, layer, keep) -> None:
        mlp = layer.mlp
        mlp.gate_proj = _prune_linear(mlp.gate_proj, keep, 0)
        mlp.up_proj = _prune_linear(mlp.up_proj, keep, 0)
        mlp.down_proj = _prune_linear(mlp.down_proj, keep, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)

    def structure(self) -> dict:
        layers = self.layers()
        return {
            "layers": len(layers),
            "hidden_size": self.model.config.hidden_size,
            "heads_per_layer": [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in layers],
            "kv_heads_per_layer": [self.head_units(layer) for layer in layers],
            "ffn_per_layer": [self.ffn_width(layer) for layer in layers],
        }


def _is_llama_block(layer) -> bool:
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim",
                                                  "num_key_value_groups", "layer_idx"))
            and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")))


def find_layout(model) -> BlockLayout | None:
    base = getattr(model, "base_model", None)
    if hasattr(getattr(base, "encoder", None), "layer"):
        return EncoderLayout(model)
    layers = getattr(base, "layers", None)
    if layers is not None and len(layers) and all(_is_llama_block(layer) for layer in layers):
        return DecoderLayout(model)
    return None


def layout_of(model) -> BlockLayout:
    """The model's block layout; a StageError naming the model class when it has neither."""
    layout = find_layout(model)
    if layout is None:
        raise StageError(f"{type(model).__name__}: {SUPPORTED}")
    return layout
