"""Fuse a causal LM's attention into one ONNX `Attention` node per layer (opset 23).

optimum's text-generation-with-past export of a llama-style decoder writes each layer's
attention as about 80 small nodes: the past/new key and value concatenation, the
grouped-query repeat (Unsqueeze, Expand, Reshape and the shape arithmetic feeding them),
QK^T, the mask, Softmax, a NaN guard and the value product. ONNX Runtime's transformer
optimizer has no rule for that pattern (its rotary-attention rule expects its own export),
and at one token per step those nodes cost more than the weights: the INT8 SmolLM2 package
spent 18 of 31 ms of a decode step outside MatMulNBits. ONNX's Attention operator (opset
23) does all of it with grouped-query heads, the past cache and an additive mask, and ONNX
Runtime runs it on CPU.

The rewrite, per layer, with the same inputs and outputs (so past/present names, the
package's cache layout and the light runtime stay as they are):
  Softmax(QK^T·scale + mask) V with past concatenation  →  Attention(q, k, v, mask, past_k, past_v)
and, where ONNX Runtime already fused the rotary embedding (RotaryEmbedding on BNSH), the
heads' Reshape/Transpose around it go too: rotary and attention run on (batch, seq, hidden).
Anything that does not match the pattern exactly is left as it is (0 fusions)."""

from __future__ import annotations

import logging

from compress.stages.optimize_onnx.rewrite import (
    HEADS_FIRST,
    Graph,
    NoMatch,
    alive,
    node_attribute,
    require_attention_opset,
    topological,
    write_nodes,
)

log = logging.getLogger(__name__)


def _cache_concat(g: Graph, expanded: str):
    """The Concat(past, new) behind the grouped-query repeat of a key or value:
    Reshape ← Expand ← Unsqueeze ← Concat."""
    reshape = g.made_by(expanded, "Reshape")
    expand = g.made_by(reshape.input[0], "Expand")
    unsqueeze = g.made_by(expand.input[0], "Unsqueeze")
    concat = g.made_by(unsqueeze.input[0], "Concat")
    if len(concat.input) != 2 or node_attribute(concat, "axis") not in (2, -2):
        raise NoMatch(f"{concat.name} is not a past/new concatenation on the sequence axis")
    return concat


def _match_layer(g: Graph, softmax) -> dict:
    """One layer's attention around `softmax`: the nodes it replaces and the fused node's
    inputs, outputs and scale."""
    add = g.made_by(softmax.input[0], "Add")
    scores = g.made_by(add.input[0], "MatMul")
    mask = add.input[1]
    scale_q, scale_k = g.made_by(scores.input[0], "Mul"), g.made_by(scores.input[1], "Mul")
    key_t = g.made_by(scale_k.input[0], "Transpose")
    key_concat = _cache_concat(g, key_t.input[0])
    nan_check = [u for u in g.consumers[softmax.output[0]] if u.op_type == "IsNaN"]
    nan_guard = [u for u in g.consumers[softmax.output[0]] if u.op_type == "Where"]
    if len(nan_check) != 1 or len(nan_guard) != 1 or len(g.consumers[softmax.output[0]]) != 2:
        raise NoMatch(f"{softmax.name}: no IsNaN/Where guard after it")
    context = g.only_consumer(nan_guard[0].output[0], "MatMul")
    if context.input[0] != nan_guard[0].output[0]:
        raise NoMatch(f"{context.name}: the probabilities are not its first input")
    value_concat = _cache_concat(g, context.input[1])
    # the mask: Where(Slice(causal and padding, to the key length), 0, a large negative number)
    mask_where = g.made_by(mask, "Where")
    mask_slice = g.made_by(mask_where.input[0], "Slice")
    # The masked score is -inf: a padding query row sees no key, and the removed NaN guard
    # wrote zeros there. ONNX Runtime's Attention kernel writes zeros for such a row itself
    # (the left-padded parity test covers it).
    if [int(a) for a in g.constant(mask_slice.input[3]).ravel()] not in ([3], [-1]):
        raise NoMatch(f"{mask_slice.name}: the mask is not cut along the key axis")
    factors = [g.constant(scale_q.input[1]), g.constant(scale_k.input[1])]
    if any(f.size != 1 for f in factors):
        raise NoMatch(f"{scores.name}: the scores are not scaled by scalars")
    scale = float(factors[0].ravel()[0]) * float(factors[1].ravel()[0])
    return {
        "replaced": [softmax, add, scores, scale_q, scale_k, key_t, key_concat, *nan_check, *nan_guard, context,
                     value_concat],
        "inputs": [scale_q.input[0], key_concat.input[1], value_concat.input[1], mask, key_concat.input[0],
                   value_concat.input[0]],
        "outputs": [context.output[0], key_concat.output[0], value_concat.output[0]],
        "scale": scale, "name": softmax.name, "mask_where": mask_where, "mask_slice": mask_slice, "at": context,
    }


def _heads_packed(g: Graph, name: str) -> str:
    """The (batch, seq, hidden) tensor that Reshape → Transpose(0,2,1,3) turned into heads."""
    transpose = g.made_by(name, "Transpose")
    if list(node_attribute(transpose, "perm", [])) != HEADS_FIRST:
        raise NoMatch(f"{transpose.name} is not a heads transpose")
    return g.made_by(transpose.input[0], "Reshape").input[0]


def _unpack_heads(g: Graph, fused, num_heads: int, kv_heads: int) -> list:
    """Run rotary and attention on (batch, seq, hidden): the nodes that become dead are
    returned. Raises NoMatch (and changes nothing) when the layer is not rotary-fused."""
    from onnx import helper

    q_rot, k_rot = g.made_by(fused.input[0], "RotaryEmbedding"), g.made_by(fused.input[1], "RotaryEmbedding")
    q, k, v = (_heads_packed(g, q_rot.input[0]), _heads_packed(g, k_rot.input[0]), _heads_packed(g, fused.input[2]))
    out_t = g.only_consumer(fused.output[0], "Transpose")
    out_r = g.only_consumer(out_t.output[0], "Reshape")
    if list(node_attribute(out_t, "perm", [])) != HEADS_FIRST:
        raise NoMatch(f"{out_t.name} is not a heads transpose")
    q_rot.input[0], k_rot.input[0], fused.input[2] = q, k, v
    q_rot.attribute.append(helper.make_attribute("num_heads", num_heads))
    k_rot.attribute.append(helper.make_attribute("num_heads", kv_heads))
    fused.output[0] = out_r.output[0]
    fused.attribute.extend([helper.make_attribute("q_num_heads", num_heads),
                            helper.make_attribute("kv_num_heads", kv_heads)])
    return [out_t, out_r]


def fuse_decoder_attention(model, num_heads: int, kv_heads: int) -> dict[str, int]:
    """Rewrite `model` (an onnx.ModelProto) in place; the counts of what was fused
    ({"Attention": layers, "Attention (batch, seq, hidden)": layers without head transposes}).
    Nothing changes when no layer matches; the opset goes to 23 when one does."""
    from onnx import helper
    graph = model.graph
    nodes = list(graph.node)
    g = Graph(nodes, graph.initializer)
    matches = []
    for softmax in [n for n in nodes if n.op_type == "Softmax"]:
        try:
            matches.append(_match_layer(g, softmax))
        except NoMatch as e:
            log.debug("decoder attention not fused at %s: %s", softmax.name, e)
    if not matches:
        return {}
    removed, fused_at = set(), {}
    for m in matches:
        # the key length is the mask's own width (past + new tokens); the Slice to it would read the fused present
        m["mask_where"].input[0] = m["mask_slice"].input[0]
        fused_at[id(m["at"])] = helper.make_node("Attention", m["inputs"], m["outputs"],
                                                 name=m["name"] + "/Attention", scale=m["scale"])
        removed.update(id(n) for n in m["replaced"])
    nodes = [fused_at.get(id(n), n) for n in nodes]  # each where its value product was
    g = Graph(nodes, graph.initializer)
    packed = 0
    for fused in fused_at.values():
        try:
            removed.update(id(n) for n in _unpack_heads(g, fused, num_heads, kv_heads))
            packed += 1
        except NoMatch as e:
            log.debug("attention %s keeps its head transposes: %s", fused.name, e)
    write_nodes(graph, topological(alive(nodes, removed, {o.name for o in graph.output})))
    require_attention_opset(model)
    counts = {"Attention": len(matches)}
    if packed:
        counts["Attention (batch, seq, hidden)"] = packed
    return counts
