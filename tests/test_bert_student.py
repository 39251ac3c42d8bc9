"""compress.bert_student: an MPNet classifier rewritten as BERT is the same function where
MPNet's relative-position bias is zero, and differs from it only by that bias otherwise."""

import pytest

torch = pytest.importorskip("torch")


def _mpnet(num_labels: int = 3):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=66, num_labels=num_labels)
    return MPNetForSequenceClassification(config).eval()


def _batch():
    ids = torch.randint(3, 100, (3, 9))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0  # right padding with MPNet's pad id
    return {"input_ids": ids, "attention_mask": mask}


def test_same_logits_where_the_relative_bias_is_zero():
    from compress.bert_student import mpnet_as_bert

    mpnet = _mpnet()
    with torch.no_grad():
        mpnet.mpnet.encoder.relative_attention_bias.weight.zero_()
    bert = mpnet_as_bert(mpnet).eval()
    batch = _batch()
    assert type(bert).__name__ == "BertForSequenceClassification"
    assert bert.config.max_position_embeddings == 66 - 2  # MPNet's rows 0-1 precede its first real position
    assert bert.config.id2label == mpnet.config.id2label
    with torch.no_grad():
        a, b = mpnet(**batch).logits, bert(**batch).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_the_relative_bias_is_what_is_lost():
    from compress.bert_student import mpnet_as_bert

    mpnet = _mpnet()
    with torch.no_grad():
        mpnet.mpnet.encoder.relative_attention_bias.weight.normal_(0, 2.0)
        batch = _batch()
        a = mpnet(**batch, output_hidden_states=True).hidden_states[-1]
        b = mpnet_as_bert(mpnet).eval()(**batch, output_hidden_states=True).hidden_states[-1]
    assert (a - b).abs().max() > 0.05  # LayerNorm outputs: O(1)


def test_only_mpnet_classifiers():
    from transformers import BertConfig, BertForSequenceClassification

    from compress.bert_student import mpnet_as_bert

    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=20))
    with pytest.raises(ValueError, match="not BertForSequenceClassification"):
        mpnet_as_bert(bert)


def test_the_bert_rewrite_exports_to_onnx(tmp_path):
    """optimum's exporter feeds token types 0 and 1: the rewrite keeps a (zero) second type."""
    from compress.artifacts import TorchModel
    from compress.bert_student import mpnet_as_bert
    from compress.stages.export_onnx import export_to_onnx

    bert = mpnet_as_bert(_mpnet())
    assert bert.config.type_vocab_size == 2 and not bert.bert.embeddings.token_type_embeddings.weight.any()
    bert.save_pretrained(tmp_path / "bert")
    exported = export_to_onnx(TorchModel(tmp_path / "bert"), tmp_path / "onnx", opset=17)
    assert exported.onnx_path.is_file()
