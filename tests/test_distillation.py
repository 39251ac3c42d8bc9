"""The one distillation objective shared by distill, prune and qat: its loss is the plain
weighted sum of its parts, qat's former convex mix is one setting of it, and each stage's
`distillation:` block keeps that stage's defaults for the fields it does not give."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from compress.distillation import DistillationModule, DistillationObjective
from compress.recipe import load_recipe
from compress.stages import DistillStage, PruneStage, QATStage
from compress.stages.base import PruneObjective, QATObjective
from compress.tasks import get_task
from tests.conftest import tiny_recipe_text

CLASSIFICATION = get_task("text-classification")


class FakeStudent(torch.nn.Module):
    """Returns fixed logits, hidden states and attention maps (through a trainable scale)."""

    def __init__(self, logits, hidden, attentions):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.config = SimpleNamespace(hidden_size=hidden[0].shape[-1])
        self.out = logits, hidden, attentions

    def forward(self, input_ids, attention_mask, labels=None, output_hidden_states=False, output_attentions=False):
        logits, hidden, attentions = self.out
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits * self.scale, labels)
        return SimpleNamespace(logits=logits * self.scale, loss=loss,
                               hidden_states=hidden if output_hidden_states else None,
                               attentions=attentions if output_attentions else None)


def test_the_objective_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    batch_size, seq, width, heads, classes, t = 3, 4, 5, 2, 3, 3.0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": torch.ones(batch_size, seq, dtype=torch.long), "attention_mask": mask,
             "labels": torch.tensor([0, 2, 1])}
    s_logits, t_logits = torch.randn(batch_size, classes), torch.randn(batch_size, classes)
    s_hidden = [torch.randn(batch_size, seq, width) for _ in range(2)]  # embeddings, layer 0
    t_hidden = [torch.randn(batch_size, seq, width) for _ in range(3)]  # embeddings, layers 0 and 1
    s_att = [torch.rand(batch_size, heads, seq, seq)]
    t_att = [torch.rand(batch_size, heads, seq, seq) for _ in range(2)]
    objective = DistillationObjective(temperature=t, soft_target_weight=0.7, label_weight=0.2, hidden_weight=1.5,
                                      attention_weight=0.4)
    module = DistillationModule(FakeStudent(s_logits, s_hidden, s_att), objective, CLASSIFICATION, layer_map=[1],
                                teacher_hidden_size=width)
    out = module(batch, t_logits, t_hidden, t_att)

    # by hand: KL(p_teacher || p_student) at T, averaged over the batch, times T^2
    p_t, p_s = torch.softmax(t_logits / t, -1), torch.softmax(s_logits / t, -1)
    kl = sum(float(p_t[i, c] * (math.log(p_t[i, c]) - math.log(p_s[i, c])))
             for i in range(batch_size) for c in range(classes)) / batch_size * t * t
    log_p = torch.log_softmax(s_logits, -1)
    ce = -sum(float(log_p[i, int(batch["labels"][i])]) for i in range(batch_size)) / batch_size
    real = [(i, j) for i in range(batch_size) for j in range(seq) if mask[i, j]]
    hidden = sum(float(((s_hidden[1][i, j] - t_hidden[2][i, j]) ** 2).mean()) for i, j in real) / len(real)
    attention = sum(float(((s_att[0][i, :, j] - t_att[1][i, :, j]) ** 2).mean()) for i, j in real) / len(real)

    assert float(out["soft_target"]) == pytest.approx(kl, rel=1e-5)
    assert float(out["label"]) == pytest.approx(ce, rel=1e-5)
    assert float(out["hidden"]) == pytest.approx(hidden, rel=1e-5)
    assert float(out["attention"]) == pytest.approx(attention, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(0.7 * kl + 0.2 * ce + 1.5 * hidden + 0.4 * attention, rel=1e-5)
    out["loss"].backward()  # the sum trains the student
    assert module.student.scale.grad is not None


def test_a_zero_weight_leaves_its_part_out():
    logits = torch.randn(2, 3)
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4),
             "labels": torch.tensor([0, 1])}
    student = FakeStudent(logits, [torch.zeros(2, 4, 5)], [torch.zeros(2, 1, 4, 4)])
    out = DistillationModule(student, QATObjective(), CLASSIFICATION)(batch)  # labels only: no teacher outputs needed
    assert set(out) == {"loss", "label"}
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert float(out["loss"].detach()) == pytest.approx(float(expected))


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_qats_former_convex_mix_is_soft_target_w_with_label_one_minus_w(tiny_classifier_dir, w):
    """The formula qat trained with before the shared objective: (1 - w) * the model's own
    cross-entropy + w * T^2 * KL(teacher || student), the model's loss alone when w is 0."""
    import torch.nn.functional as F

    from compress.models import load_model

    torch.manual_seed(1)
    net = load_model(tiny_classifier_dir).eval()
    batch = {"input_ids": torch.randint(1000, 3000, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "token_type_ids": torch.zeros(4, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}
    teacher_logits, t = torch.randn(4, 2) * 3, 2.0
    with torch.no_grad():
        own = net(**batch)
        kl = F.kl_div(F.log_softmax(own.logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                      reduction="batchmean")
        old = own.loss if not w else (1 - w) * own.loss + w * t**2 * kl
        module = DistillationModule(net, QATObjective(soft_target_weight=w, label_weight=1 - w, temperature=t),
                                    CLASSIFICATION)
        new = module(batch, teacher_logits if w else None)["loss"]
    assert float(new) == pytest.approx(float(old), rel=1e-6, abs=1e-7)


STAGE_BODY = {"distill": "every: 2", "prune": "heads: 0.3", "qat": "epochs: 1"}
DEFAULTS = {  # per stage: (soft_target_weight, label_weight), the behaviour before the shared objective
    "distill": (1.0, 0.5),
    "prune": (1.0, 1.0),
    "qat": (0.0, 1.0),
}


@pytest.mark.parametrize("kind", list(DEFAULTS))
def test_a_partial_distillation_block_keeps_the_stages_other_defaults(recipe_dir, kind):
    def objective(block: str):
        path = recipe_dir / "recipe.yaml"
        path.write_text(tiny_recipe_text(stages=f"\n  - kind: {kind}\n    {STAGE_BODY[kind]}\n{block}"))
        return load_recipe(path).stages[0].distillation

    soft, label = DEFAULTS[kind]
    default = objective("")
    assert (default.soft_target_weight, default.label_weight, default.temperature) == (soft, label, 2.0)
    partial = objective("    distillation: {temperature: 4}\n")
    assert isinstance(partial, DistillationObjective)
    assert partial.model_dump() == {"temperature": 4.0, "soft_target_weight": soft, "label_weight": label,
                                    "hidden_weight": 0.0, "attention_weight": 0.0}
    other = objective("    distillation:\n      label_weight: 0.25\n")
    assert (other.soft_target_weight, other.label_weight, other.temperature) == (soft, 0.25, 2.0)


def test_every_training_stage_has_the_same_objective_fields():
    types = {cls: cls.model_fields["distillation"].annotation for cls in (DistillStage, PruneStage, QATStage)}
    assert types == {DistillStage: DistillationObjective, PruneStage: PruneObjective, QATStage: QATObjective}
    names = {tuple(t.model_fields) for t in types.values()}
    assert names == {("temperature", "soft_target_weight", "label_weight", "hidden_weight", "attention_weight")}
    assert QATStage(kind="qat").distillation.needs_teacher is False  # qat's default loads no teacher
    assert PruneStage(kind="prune", heads=0.3).distillation.needs_teacher is True


def test_per_token_soft_targets_average_over_real_tokens_only():
    """NER: one tag distribution per token; padding never enters the loss."""
    from compress.distillation import soft_target_kl

    torch.manual_seed(2)
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    by_hand = sum(float(torch.nn.functional.kl_div(torch.log_softmax(s[i, j], -1), torch.log_softmax(t[i, j], -1),
                                                     log_target=True, reduction="sum")) for i, j in real) / len(real)
    assert float(soft_target_kl(s, t, 1.0, mask, -1)) == pytest.approx(by_hand, rel=1e-5)
    s2 = s.clone()
    s2[0, 3], s2[1, 2:] = 100.0, -100.0  # padding positions: no effect
    assert float(soft_target_kl(s2, t, 1.0, mask, -1)) == pytest.approx(by_hand, rel=1e-5)


def test_span_soft_targets_are_distributions_over_the_real_tokens():
    """QA: start and end are distributions over the sequence (axis 1), padding masked out of them."""
    from compress.distillation import soft_target_kl

    torch.manual_seed(3)
    s, t = torch.randn(2, 5, 2), torch.randn(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    lengths, parts = [5, 3], []
    for i, n in enumerate(lengths):
        for c in range(2):
            parts.append(float(torch.nn.functional.kl_div(torch.log_softmax(s[i, :n, c], -1),
                                                          torch.log_softmax(t[i, :n, c], -1),
                                                          log_target=True, reduction="sum")))
    assert float(soft_target_kl(s, t, 1.0, mask, 1)) == pytest.approx(sum(parts) / len(parts), rel=1e-5)
