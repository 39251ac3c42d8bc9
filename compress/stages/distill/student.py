"""Build a distillation student from a teacher: a subset of its layers, or a smaller
configuration initialised from the teacher's weights; and which teacher layer each
student layer imitates. Imported by the distill stage when it runs (it imports torch)."""

from __future__ import annotations

import copy
import logging

from compress.errors import StageError
from compress.models import keep_layers_

log = logging.getLogger(__name__)


def spread_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers for a student of n_student layers, always ending on the
    last one (the layer the classifier reads): 6 → 3 gives [1, 3, 5]."""
    if n_student > n_teacher:
        raise StageError(f"the student has {n_student} layers but the teacher only {n_teacher}")
    return [round((j + 1) * n_teacher / n_student) - 1 for j in range(n_student)]


def student_from_layers(teacher, keep: list[int]):
    student = copy.deepcopy(teacher)
    keep_layers_(student, keep)
    return student


def student_from_config(teacher, hidden_size: int | None, num_layers: int | None, num_heads: int | None,
                        intermediate_size: int | None, num_kv_heads: int | None = None):
    """A smaller model of the teacher's class. Every tensor is initialised from the mapped
    teacher tensor (student layer j ← teacher layer spread_layers[j]) by taking its leading
    slice, the 'weight selection' initialisation: better than random for a student that
    shares the vocabulary; a tensor the teacher cannot cover keeps its random init."""
    import re

    import torch

    from compress.blocks import layout_of

    layout = layout_of(teacher)
    cfg = copy.deepcopy(teacher.config)
    n_teacher = cfg.num_hidden_layers
    cfg.hidden_size = hidden_size or cfg.hidden_size
    cfg.num_hidden_layers = num_layers or cfg.num_hidden_layers
    cfg.num_attention_heads = num_heads or cfg.num_attention_heads
    cfg.intermediate_size = intermediate_size or cfg.intermediate_size
    cfg.pruned_heads = {}
    if hasattr(cfg, "intermediate_sizes"):
        del cfg.intermediate_sizes
    if layout.kind == "decoder":
        _decoder_heads_(cfg, num_heads, num_kv_heads, teacher.config)
    elif num_kv_heads is not None:
        raise StageError(f"student.num_kv_heads: {type(teacher).__name__} is an encoder without grouped-query attention")
    elif cfg.hidden_size % cfg.num_attention_heads:
        raise StageError(f"student hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_attention_heads}")
    layer_map = spread_layers(n_teacher, cfg.num_hidden_layers)
    if getattr(cfg, "layer_types", None):  # a decoder's sliding/full attention per layer follows its teacher layer
        cfg.layer_types = [teacher.config.layer_types[t] for t in layer_map]
    student = type(teacher)(cfg)
    source = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for name, param in student.state_dict().items():
            match = re.search(layout.layer_names, name)  # student layer j ← teacher layer layer_map[j]
            teacher_name = name if match is None else \
                f"{name[:match.start(1)]}{layer_map[int(match.group(1))]}{name[match.end(1):]}"
            src = source.get(teacher_name)
            if src is None or src.dim() != param.dim() or any(s < p for s, p in zip(src.shape, param.shape)):
                continue
            param.copy_(src[tuple(slice(0, n) for n in param.shape)])
            copied += 1
    log.info("student initialised from the teacher: %d of %d tensors", copied, len(student.state_dict()))
    return student, layer_map


def _decoder_heads_(cfg, num_heads: int | None, num_kv_heads: int | None, teacher_cfg) -> None:
    """A decoder student's attention shape: num_key_value_heads (the teacher's, unless given or
    unless it no longer divides the query heads) and head_dim (hidden_size / heads when the
    width or the heads change, else the teacher's) kept consistent with each other."""
    teacher_kv = getattr(teacher_cfg, "num_key_value_heads", None) or teacher_cfg.num_attention_heads
    kv = num_kv_heads or (teacher_kv if cfg.num_attention_heads % teacher_kv == 0 else None)
    if kv is None:
        raise StageError(f"student.num_heads {cfg.num_attention_heads} is not a multiple of the teacher's "
                         f"{teacher_kv} key/value heads: set student.num_kv_heads")
    if cfg.num_attention_heads % kv:
        raise StageError(f"student.num_heads {cfg.num_attention_heads} is not a multiple of num_kv_heads {kv}")
    cfg.num_key_value_heads = kv
    changed = cfg.hidden_size != teacher_cfg.hidden_size or num_heads is not None
    if changed and cfg.hidden_size % cfg.num_attention_heads:
        raise StageError(f"student hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_attention_heads}")
    teacher_dim = getattr(teacher_cfg, "head_dim", None)
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads if changed or not teacher_dim else teacher_dim
