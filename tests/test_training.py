"""The shared training loop: schedule arithmetic, keep-best, and in-process resume."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from compress.stages.finetune import FinetuneStage
from compress.training import EpochOrder, train_loop


def _data(n=30):
    import torch

    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 100, (6,), generator=g).tolist(), "label": i % 2} for i in range(n)]


def _collate(batch):
    import torch

    return {"input_ids": torch.tensor([e["input_ids"] for e in batch]),
            "labels": torch.tensor([e["label"] for e in batch])}


def _model():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))


def _loss(model, batch):
    return model(**batch).loss


class _Stop(Exception):
    pass


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = EpochOrder(20, seed=3), EpochOrder(20, seed=3)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(20))


def test_epochs_and_gradient_accumulation_set_the_step_count():
    # 30 examples / batch 4 = 8 batches per epoch; accumulating 3 gives 3 optimizer steps per epoch
    stage = FinetuneStage(kind="finetune", epochs=2, batch_size=4, gradient_accumulation_steps=3)
    result = train_loop(_model(), _data(), _collate, stage, _loss, seed=0)
    assert result.steps == 6 and len(result.losses) == 16


def test_interrupted_run_resumes_from_its_checkpoint_and_matches(tmp_path):
    stage = FinetuneStage(kind="finetune", max_steps=20, batch_size=4, checkpoint_every=5, learning_rate=1e-3)
    clean = train_loop(_model(), _data(), _collate, stage, _loss, seed=1)

    def stop_at_12(model, step, total):
        if step == 12:
            raise _Stop

    ck = tmp_path / "checkpoint"
    with pytest.raises(_Stop):
        train_loop(_model(), _data(), _collate, stage, _loss, seed=1, checkpoint_dir=ck, resume_key="k",
                   on_step=stop_at_12)
    assert (ck / "state.json").is_file()
    other_key = train_loop(_model(), _data(), _collate, stage.model_copy(update={"max_steps": 1}), _loss, seed=1,
                           checkpoint_dir=tmp_path / "unused", resume_key="k")
    assert other_key.resumed_from is None
    resumed = train_loop(_model(), _data(), _collate, stage, _loss, seed=1, checkpoint_dir=ck, resume_key="k")
    assert resumed.resumed_from == 10  # the last checkpoint before the interruption
    assert resumed.losses == clean.losses  # same batches, same dropout, same optimizer state
    for (name, p), q in zip(clean.model.state_dict().items(), resumed.model.state_dict().values()):
        assert (p == q).all(), name
    # the finished state stays until the stage completes (the stage context removes it)
    assert json.loads((ck / "state.json").read_text())["step"] == 20


def test_a_checkpoint_with_another_key_is_ignored(tmp_path):
    stage = FinetuneStage(kind="finetune", max_steps=6, batch_size=4, checkpoint_every=2)
    ck = tmp_path / "ck"

    def stop_at_5(model, step, total):
        if step == 5:
            raise _Stop

    with pytest.raises(_Stop):
        train_loop(_model(), _data(), _collate, stage, _loss, checkpoint_dir=ck, resume_key="old", on_step=stop_at_5)
    result = train_loop(_model(), _data(), _collate, stage, _loss, checkpoint_dir=ck, resume_key="new")
    assert result.resumed_from is None and result.steps == 6


def test_keep_best_restores_the_best_evaluation():
    stage = FinetuneStage(kind="finetune", max_steps=6, batch_size=4, eval_every=2, keep_best=True)
    scores = iter([0.5, 0.9, 0.6])
    snapshots = {}

    def eval_fn(model):
        acc = next(scores)
        snapshots[acc] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"accuracy": acc}

    result = train_loop(_model(), _data(), _collate, stage, _loss, eval_fn=eval_fn)
    assert result.best_step == 4 and [e["step"] for e in result.evaluations] == [2, 4, 6]
    for k, v in result.model.state_dict().items():
        assert (v == snapshots[0.9][k]).all(), k


def test_keep_best_needs_eval_every():
    with pytest.raises(ValidationError, match="keep_best needs eval_every"):
        FinetuneStage(kind="finetune", keep_best=True)
