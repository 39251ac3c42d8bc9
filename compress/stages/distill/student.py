"""Build a distillation student from a teacher: a subset of its layers, or a smaller
configuration initialised from the teacher's weights; and which teacher layer each
student layer imitates. Imported by the distill stage when it runs (it imports torch)."""

from __future__ import annotations

import copy
import logging

from compress.errors import StageError
from compress.models import keep_encoder_layers_

log = logging.getLogger(__name__)


def spread_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers for a student of n_student layers, always ending on the
    last one (the layer the classifier reads): 6 → 3 gives [1, 3, 5]."""
    if n_student > n_teacher:
        raise StageError(f"the student has {n_student} layers but the teacher only {n_teacher}")
    return [round((j + 1) * n_teacher / n_student) - 1 for j in range(n_student)]


def student_from_layers(teacher, keep: list[int]):
    student = copy.deepcopy(teacher)
    keep_encoder_layers_(student, keep)
    return student


def student_from_config(teacher, hidden_size: int | None, num_layers: int | None, num_heads: int | None,
                        intermediate_size: int | None):
    """A smaller model of the teacher's class. Every tensor is initialised from the mapped
    teacher tensor (student layer j ← teacher layer spread_layers[j]) by taking its leading
    slice, the 'weight selection' initialisation: better than random for a student that
    shares the vocabulary; a tensor the teacher cannot cover keeps its random init."""
    import re

    import torch

    cfg = copy.deepcopy(teacher.config)
    n_teacher = cfg.num_hidden_layers
    cfg.hidden_size = hidden_size or cfg.hidden_size
    cfg.num_hidden_layers = num_layers or cfg.num_hidden_layers
    cfg.num_attention_heads = num_heads or cfg.num_attention_heads
    cfg.intermediate_size = intermediate_size or cfg.intermediate_size
    cfg.pruned_heads = {}
    if hasattr(cfg, "intermediate_sizes"):
        del cfg.intermediate_sizes
    if cfg.hidden_size % cfg.num_attention_heads:
        raise StageError(f"student hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_attention_heads}")
    student = type(teacher)(cfg)
    layer_map = spread_layers(n_teacher, cfg.num_hidden_layers)
    source = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for name, param in student.state_dict().items():
            teacher_name = re.sub(r"encoder\.layer\.(\d+)\.",
                                  lambda m: f"encoder.layer.{layer_map[int(m.group(1))]}.", name)
            src = source.get(teacher_name)
            if src is None or src.dim() != param.dim() or any(s < p for s, p in zip(src.shape, param.shape)):
                continue
            param.copy_(src[tuple(slice(0, n) for n in param.shape)])
            copied += 1
    log.info("student initialised from the teacher: %d of %d tensors", copied, len(student.state_dict()))
    return student, layer_map
