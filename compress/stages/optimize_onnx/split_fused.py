"""Undoing the fusions whose ONNX Runtime CPU kernels are slower than their parts.

ORT's SkipLayerNormalization and BiasGelu CPU kernels (1.32) are scalar loops with a division
per element; LayerNormalization and Gelu are vectorized. Measured on a 2-core AVX512 CPU, one
thread (benchmarks/results/cpu-kernels/results.json): SkipLayerNormalization over (32, 40, 384)
2.57 ms against 0.41 ms for Sum + LayerNormalization, 3.8x at a batch-1 (1, 22, 384); BiasGelu
over (32, 40, 1536) 2.77 ms against 1.51 ms for Gelu with the bias folded into the MatMul.
The split writes the residual sum as a Sum node: ORT's session-level SkipLayerNormFusion
matches Add followed by LayerNormalization and would fuse the parts back into the slow op; it
does not match Sum. The fused op's bias goes back into an Add straight after the MatMul that
produced the residual branch, where a dynamic-INT8 session folds it into the INT8 MatMul: a
three-input Sum with the bias broadcast cost MPNet-base 10 % of its INT8 batch-32 time."""

from __future__ import annotations

from collections import Counter

from compress.stages.optimize_onnx.rewrite import node_attribute, write_nodes

SPLITTABLE = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu")
# What optimize_onnx splits by default. SkipLayerNormalization's parts were faster at every shape
# measured (1.9-6.2x); BiasGelu's at batch 32 (1.8-2.1x) and within 3 us at batch 1. A decoder's
# SkipSimplifiedLayerNormalization is not split by default: at a decode step (1, 1, 576) the two
# ran equal (0.007 ms); only a 512-token prefill gains (2.9x at 1 thread).
SPLIT_ON_CPU = ("SkipLayerNormalization", "BiasGelu")
MS_DOMAIN = "com.microsoft"


def _present(names, i: int) -> str:
    return names[i] if len(names) > i else ""


def _base(node) -> str:
    """A prefix for the parts' names, unique in the graph even for an unnamed node: output names are."""
    return node.name or node.output[0]


def _split_skip_layer_norm(node, read: set[str], matmul_outputs: set[str], simplified: bool) -> list | None:
    """[Add(matmul output, bias) ->] Sum(input, skip) -> (Simplified)LayerNormalization, or None
    where the node's mean / inverse-std outputs are read (the parts do not produce them). A bias
    with no MatMul output to go to stays in the Sum."""
    from onnx import helper

    if any(name in read for name in node.output[1:3] if name):
        return None
    x, skip, gamma = node.input[0], node.input[1], node.input[2]
    # SkipLayerNormalization: (input, skip, gamma, beta, bias); the simplified op has no beta,
    # its fourth input is the bias
    beta, bias = ("", _present(node.input, 3)) if simplified else (_present(node.input, 3), _present(node.input, 4))
    summed = _present(node.output, 3) or f"{_base(node)}/sum"
    eps = node_attribute(node, "epsilon", 1e-12)
    norm_inputs = [summed, gamma, beta] if beta else [summed, gamma]
    biased = []
    if bias and (x in matmul_outputs or skip in matmul_outputs):
        branch, other = (x, skip) if x in matmul_outputs else (skip, x)
        biased = [helper.make_node("Add", [branch, bias], [f"{_base(node)}/biased"], name=f"{_base(node)}/bias")]
        x, skip, bias = biased[0].output[0], other, ""
    return [
        *biased,
        helper.make_node("Sum", [x, skip, *([bias] if bias else [])], [summed], name=f"{_base(node)}/sum"),
        helper.make_node("SimplifiedLayerNormalization" if simplified else "LayerNormalization", norm_inputs,
                         [node.output[0]], name=f"{_base(node)}/norm", axis=-1, epsilon=eps),
    ]


def _split_bias_gelu(node) -> list:
    """Add(input, bias) -> Gelu: a dynamic-INT8 session folds the Add into the MatMul before it."""
    from onnx import helper

    biased = f"{_base(node)}/biased"
    return [
        helper.make_node("Add", [node.input[0], node.input[1]], [biased], name=f"{_base(node)}/bias"),
        helper.make_node("Gelu", [biased], [node.output[0]], name=f"{_base(node)}/gelu", domain=MS_DOMAIN),
    ]


def split_fused_ops(model, op_types: list[str]) -> dict[str, int]:
    """Rewrite the graph's `op_types` nodes (of SPLITTABLE) into their parts, in place; the
    count split per op type. The result computes the same function (float rounding aside)."""
    from onnx import helper

    graph = model.graph
    wanted = set(op_types)
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    matmul_outputs = {n.output[0] for n in graph.node if n.op_type == "MatMul"}
    elem_types = {t.name: t.data_type for t in graph.initializer}
    nodes, split, bias_types = [], Counter(), []
    for node in graph.node:
        parts = None
        if node.domain == MS_DOMAIN and node.op_type in wanted:
            if node.op_type == "BiasGelu":
                parts = _split_bias_gelu(node)
            else:
                simplified = node.op_type.startswith("SkipSimplified")
                parts = _split_skip_layer_norm(node, read, matmul_outputs, simplified=simplified)
        if parts is None:
            nodes.append(node)
        else:
            nodes.extend(parts)
            split[node.op_type] += 1
            bias_types += [helper.make_tensor_value_info(p.output[0], elem_types[p.input[1]], None)
                           for p in parts if p.op_type == "Add" and p.input[1] in elem_types]
    if split:  # the parts' com.microsoft Gelu needs no new opset import: the fused op had one
        write_nodes(graph, nodes)
        # Each bias Add the split writes says its type (its bias's). ONNX shape inference does
        # not know com.microsoft ops (Gelu, BiasGelu), so the residual branch after one arrives
        # untyped; with the bias out of the residual Sum nothing typed it again, and ORT's
        # quantizer skips the next layer's activation x activation MatMuls it cannot type.
        graph.value_info.extend(bias_types)
    return dict(split)
