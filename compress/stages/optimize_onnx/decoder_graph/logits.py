"""A `logits_to_keep` input (transformers' name for it): the language-model head runs on the
last k positions only, k = 0 keeping every position as the export did.

An exported decoder computes logits for every prompt position, though generation reads the
last one: at a 512-token prompt SmolLM2's head is 29 of 137 GFLOP of the prefill and writes
100 MB of logits. The rewrite slices the final hidden states before the head's MatMul;
evaluation (perplexity needs every position) feeds 0, the generating runtime feeds 1."""

from __future__ import annotations

LOGITS = "logits"
LOGITS_TO_KEEP = "logits_to_keep"


def add_logits_to_keep(model) -> bool:
    """Rewrite `model` (an onnx.ModelProto) in place; False (unchanged) when the logits are not
    a MatMul of the hidden states by a weight, or the input exists already."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if any(i.name == LOGITS_TO_KEEP for i in graph.input):
        return False
    head = next((n for n in graph.node if LOGITS in n.output), None)
    weights = {t.name for t in graph.initializer}
    if head is None or head.op_type != "MatMul" or head.input[1] not in weights:
        return False
    hidden, kept = head.input[0], f"{head.name}/last_positions"
    constants = [numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{kept}/end"),
                 numpy_helper.from_array(np.array([1], np.int64), f"{kept}/axis")]
    nodes = [  # hidden[:, -k:, :]; -0 is 0, every position
        helper.make_node("Neg", [LOGITS_TO_KEEP], [f"{kept}/neg"], name=f"{kept}/Neg"),
        helper.make_node("Reshape", [f"{kept}/neg", constants[1].name], [f"{kept}/start"], name=f"{kept}/Reshape"),
        helper.make_node("Slice", [hidden, f"{kept}/start", constants[0].name, constants[1].name], [kept],
                         name=f"{kept}/Slice"),
    ]
    head.input[0] = kept
    at = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    graph.initializer.extend(constants)
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []))
    for output in graph.output:  # its positions are k now, not the input's sequence length
        dims = output.type.tensor_type.shape.dim
        if output.name == LOGITS and len(dims) == 3:
            dims[1].Clear()
            dims[1].dim_param = "logits_positions"
    return True
