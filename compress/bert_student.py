"""An MPNet classifier rewritten as a BERT classifier, so that ONNX Runtime's transformer
optimizer fuses its attention (it has BERT rules and none for MPNet).

MPNet is BERT plus a relative-position bias added to every attention score: every other
tensor has a BERT counterpart (q/k/v/o, the two LayerNorms, the FFN, the classification head
= BERT's pooler + classifier). The bias has none, so the converted model is the same function
only where the bias is zero; otherwise it is a starting point that distillation from the
MPNet teacher trains the rest of the way. Imports torch and transformers only, nothing else
of compress, so that a training script on another machine can use it."""

from __future__ import annotations

_LAYER_NAMES = {  # MPNet layer tensor → BERT layer tensor
    "attention.attn.q": "attention.self.query",
    "attention.attn.k": "attention.self.key",
    "attention.attn.v": "attention.self.value",
    "attention.attn.o": "attention.output.dense",
    "attention.LayerNorm": "attention.output.LayerNorm",
    "intermediate.dense": "intermediate.dense",
    "output.dense": "output.dense",
    "output.LayerNorm": "output.LayerNorm",
}


# MPNet numbers real tokens from its embeddings' padding_idx + 1, and transformers fixes that
# padding_idx at 1 whatever the config's pad_token_id: rows 0 and 1 of its position table are
# never a real token's, and BERT's position p is MPNet's row p + 2.
_MPNET_POSITION_OFFSET = 2


def bert_config_of(mpnet_config):
    """The BERT configuration with MPNet's shape (its position table less the unused rows)."""
    from transformers import BertConfig

    c = mpnet_config
    offset = _MPNET_POSITION_OFFSET
    return BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
        hidden_dropout_prob=c.hidden_dropout_prob, attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=c.max_position_embeddings - offset, layer_norm_eps=c.layer_norm_eps,
        type_vocab_size=2,  # MPNet has no token types; optimum's export feeds types 0 and 1 to the table
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        id2label=dict(c.id2label), label2id=dict(c.label2id), problem_type=c.problem_type,
        architectures=["BertForSequenceClassification"],
    )


def mpnet_as_bert(model):
    """A BertForSequenceClassification holding `model`'s (an MPNetForSequenceClassification)
    weights; the relative-position bias is dropped (see the module's docstring)."""
    import torch
    from transformers import BertForSequenceClassification

    if type(model).__name__ != "MPNetForSequenceClassification":
        raise ValueError(f"mpnet_as_bert converts an MPNetForSequenceClassification, not {type(model).__name__}")
    config = bert_config_of(model.config)
    bert = BertForSequenceClassification(config)
    source = model.state_dict()
    offset = _MPNET_POSITION_OFFSET
    target = {
        "bert.embeddings.word_embeddings.weight": source["mpnet.embeddings.word_embeddings.weight"],
        "bert.embeddings.position_embeddings.weight": source["mpnet.embeddings.position_embeddings.weight"][offset:],
        "bert.embeddings.token_type_embeddings.weight": torch.zeros(2, config.hidden_size),
    }
    for name, value in source.items():
        for mpnet_part, bert_part in (("mpnet.embeddings.LayerNorm", "bert.embeddings.LayerNorm"),
                                      ("classifier.dense", "bert.pooler.dense"),
                                      ("classifier.out_proj", "classifier")):
            if name.startswith(mpnet_part + "."):
                target[bert_part + name[len(mpnet_part):]] = value
        if name.startswith("mpnet.encoder.layer."):
            index, rest = name[len("mpnet.encoder.layer."):].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            target[f"bert.encoder.layer.{index}.{_LAYER_NAMES[module]}.{leaf}"] = value
    missing = set(bert.state_dict()) - set(target)
    if missing:
        raise ValueError(f"mpnet_as_bert: no MPNet tensor for {sorted(missing)}")
    bert.load_state_dict(target, strict=True)
    return bert.to(next(model.parameters()).dtype)
