"""Knowledge distillation's training loss: the loss of a DistillationObjective (soft-target
KL, hard-label CE, hidden-state MSE with learned projections where widths differ,
attention-map MSE), which distill, prune and qat all train with. Imported by stages only
when they run (it imports torch)."""

from __future__ import annotations

import logging

import torch

from compress.errors import StageError
from compress.stages.base import DistillationObjective
from compress.tasks import IGNORED

log = logging.getLogger(__name__)
# collate extras that are not model inputs: every task's loss targets, cached teacher outputs
NON_MODEL_KEYS = ("labels", "start_positions", "end_positions", "teacher_logits")


# ---------------------------------------------------------------------------- losses


def soft_target_kl(student_logits, teacher_logits, temperature: float, mask=None, axis: int = -1):
    """KL(teacher ‖ student) on temperature-softened distributions over `axis`, scaled by T²
    so its gradients keep their size as T changes (Hinton et al.). Averaged over every other
    position: examples (a label per text), real tokens (a label per token: `mask` (B, S) drops
    padding), or examples × outputs (start and end distributions over the tokens: padding is
    masked out of the distribution itself)."""
    import torch.nn.functional as F

    t = temperature
    over_tokens = mask is not None and axis != -1  # distributions over the sequence axis
    if over_tokens:
        keep = mask.bool().reshape(*mask.shape, *[1] * (student_logits.dim() - mask.dim()))
        student_logits = student_logits.masked_fill(~keep, -1e4)
        teacher_logits = teacher_logits.masked_fill(~keep, -1e4)
    log_s, log_t = F.log_softmax(student_logits / t, axis), F.log_softmax(teacher_logits / t, axis)
    kl = (log_t.exp() * (log_t - log_s)).sum(axis)
    if mask is not None and not over_tokens:  # one distribution per token: real tokens only
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp_min(1) * t * t
    return kl.mean() * t * t


def masked_mse(a, b, mask):
    """Mean squared error over the positions where mask (B, S) is 1 (padding excluded)."""
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp_min(1)


def attention_mse(student_att, teacher_att, mask):
    """MSE between attention maps (B, heads, S, S) over real query rows; head-averaged
    maps are compared when the head counts differ (pruned or smaller students)."""
    if student_att.shape[1] != teacher_att.shape[1]:
        student_att, teacher_att = student_att.mean(1, keepdim=True), teacher_att.mean(1, keepdim=True)
    rows = mask[:, None, :, None].to(student_att.dtype)
    diff = (student_att - teacher_att) ** 2 * rows
    return diff.sum() / (rows.sum() * student_att.shape[1] * student_att.shape[-1]).clamp_min(1)


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


class DistillationModule(torch.nn.Module):
    """The student plus its hidden-state projections, as one module, so that one
    DistributedDataParallel wrapper syncs every trainable gradient. forward() runs the
    student and returns the objective's weighted sum and its parts (named after their
    weights: soft_target, label, hidden, attention); the teacher's outputs come in.
    layer_map[j] = the teacher layer that student layer j imitates (hidden/attention only)."""

    def __init__(self, student, objective: DistillationObjective, task, layer_map: list[int] | None = None,
                 teacher_hidden_size: int | None = None):
        import torch

        super().__init__()
        self.student = student
        self.objective = objective
        self.task = task
        self.layer_map = list(layer_map or [])
        self.projections = None
        if objective.needs_teacher_internals and not self.layer_map:
            raise StageError("hidden_weight and attention_weight need a layer map between student and teacher")
        if objective.hidden_weight > 0 and student.config.hidden_size != teacher_hidden_size:
            self.projections = torch.nn.ModuleList(
                torch.nn.Linear(student.config.hidden_size, teacher_hidden_size) for _ in self.layer_map)

    def forward(self, batch: dict, teacher_logits=None, teacher_hidden=None, teacher_attentions=None) -> dict:
        from compress.tasks import torch_outputs

        w = self.objective
        internals = {"output_hidden_states": True} if w.hidden_weight > 0 else {}
        if w.attention_weight > 0:
            internals["output_attentions"] = True
        # a batch of augmented copies only has no target to learn from: its label part is 0, not NaN
        labelled = w.label_weight > 0 and any(bool((batch[k] != IGNORED).any()) for k in self.task.target_keys)
        targets = {k: batch[k] for k in self.task.target_keys} if labelled else {}
        out = self.student(**model_inputs(batch), **targets, **internals)
        parts = {}
        if w.soft_target_weight > 0:
            logits = torch_outputs(out, self.task)
            per_token = logits.dim() >= 3 or len(self.task.output_names) > 1
            axis = self.task.distribution_axis if self.task.distribution_axis < 0 else self.task.distribution_axis + 1
            parts["soft_target"] = soft_target_kl(logits, teacher_logits, w.temperature,
                                                  _padding_mask(batch) if per_token else None, axis)
        if w.label_weight > 0:  # the task's own loss on its targets (labels, answer positions)
            parts["label"] = out.loss if labelled else torch.zeros((), device=batch["input_ids"].device)
        mask = _padding_mask(batch) if w.needs_teacher_internals else None
        if w.hidden_weight > 0:
            terms = []
            for j, t in enumerate(self.layer_map):
                s_h = out.hidden_states[j + 1]  # index 0 is the embeddings
                if self.projections is not None:
                    s_h = self.projections[j](s_h)
                terms.append(masked_mse(s_h, teacher_hidden[t + 1], mask))
            parts["hidden"] = sum(terms) / len(terms)
        if w.attention_weight > 0:
            terms = [attention_mse(out.attentions[j], teacher_attentions[t], mask) for j, t in enumerate(self.layer_map)]
            parts["attention"] = sum(terms) / len(terms)
        total = sum(getattr(w, f"{name}_weight") * value for name, value in parts.items())
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}


def _padding_mask(batch: dict):
    mask = batch.get("attention_mask")
    return batch["input_ids"].new_ones(batch["input_ids"].shape) if mask is None else mask


def teacher_outputs(teacher, batch: dict, objective: DistillationObjective, task):
    """(logits, hidden_states, attentions) of the frozen teacher, None where the objective
    does not use them; cached logits are used when the batch carries them and no internal
    state is needed."""
    import torch

    if not objective.needs_teacher:
        return None, None, None
    if "teacher_logits" in batch and not objective.needs_teacher_internals:
        return batch["teacher_logits"], None, None
    from compress.tasks import torch_outputs

    with torch.no_grad():
        out = teacher(**model_inputs(batch), output_hidden_states=objective.hidden_weight > 0,
                      output_attentions=objective.attention_weight > 0)
    return torch_outputs(out, task), out.hidden_states, out.attentions


def make_loss_fn(teacher, objective: DistillationObjective, task, parts: list[dict] | None = None):
    """loss_fn for train_loop over a DistillationModule: the teacher's outputs (none when the
    objective needs no teacher: teacher may then be None), then the module called through
    train_loop's wrapper so DistributedDataParallel syncs its gradients. Appends each step's
    parts to `parts` when given."""

    def loss_fn(wrapped, batch):
        out = wrapped(batch, *teacher_outputs(teacher, batch, objective, task))
        if parts is not None:
            parts.append({k: float(v) for k, v in out.items() if k != "loss"})
        return out["loss"]

    return loss_fn


def cache_teacher_logits(teacher, examples: list[dict], collate, task, batch_size: int = 64) -> list[dict]:
    """The examples with the teacher's outputs attached (computed once, not every epoch;
    per-token outputs trimmed to the example's tokens). With several processes each rank
    runs the teacher on its own contiguous shard and the shards are gathered in order."""
    import torch

    from compress.distributed import gather_in_order, launch, shard_of
    from compress.tasks import split_rows, torch_outputs

    job = launch()
    mine = shard_of(examples, job) if job.multi else examples
    device = next(teacher.parameters()).device
    logits_of_mine = []
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            batch = {k: v.to(device) for k, v in model_inputs(collate(chunk)).items()}
            logits = torch_outputs(teacher(**batch), task).float().cpu().numpy()
            logits_of_mine.extend(split_rows(logits, [len(ex["input_ids"]) for ex in chunk]))
    every = gather_in_order(logits_of_mine) if job.multi else logits_of_mine
    return [{**ex, "teacher_logits": row} for ex, row in zip(examples, every, strict=True)]


def with_teacher_logits(collate):
    """Wrap a collate function so cached teacher outputs travel with the batch (per-token
    outputs zero-padded to the batch's width; padding never enters the loss)."""

    def wrapped(batch: list[dict]) -> dict:
        import numpy as np
        import torch

        tensors = collate(batch)
        if "teacher_logits" in batch[0]:
            rows = [b["teacher_logits"] for b in batch]
            if rows[0].ndim >= 2:  # per token: (tokens, ...) → (batch, width, ...)
                width = tensors["input_ids"].shape[1]
                padded = np.zeros((len(rows), width, *rows[0].shape[1:]), dtype=rows[0].dtype)
                for i, row in enumerate(rows):
                    padded[i, : len(row)] = row
                rows = padded
            tensors["teacher_logits"] = torch.from_numpy(np.stack(rows))
        return tensors

    return wrapped


def mean_objective_loss(module: DistillationModule, teacher, examples: list[dict], collate,
                        batch_size: int = 64) -> float:
    """Mean of the objective's loss over `examples` (dropout off): the number that training
    should bring down."""
    import torch

    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
            loss = module(batch, *teacher_outputs(teacher, batch, module.objective, module.task))["loss"]
            size = batch["input_ids"].shape[0]
            total, n = total + float(loss) * size, n + size
    module.train(was_training)
    return total / max(1, n)
