"""`distill`: train a smaller student to imitate a teacher (knowledge distillation).

The student is derived from the incoming model: a subset of its layers (keep_layers /
every), a smaller configuration (student:), or the incoming model itself when the teacher
is another model (e.g. recovering a pruned model from the unpruned one, `teacher: stage:2`).
The teacher defaults to the incoming model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.artifacts import Artifact, TorchModel
from compress.augmentation import AugmentSpec
from compress.errors import CompressError, StageError
from compress.stages.base import (
    STAGE_REF,
    DistillationObjective,
    StageConfig,
    TrainingSchedule,
    find_stage,
)


class StudentSpec(BaseModel):
    """A smaller configuration of the teacher's architecture; unset fields keep the teacher's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int | None = Field(None, ge=8, le=16384)
    num_layers: int | None = Field(None, ge=1, le=256)
    num_heads: int | None = Field(None, ge=1, le=256)
    intermediate_size: int | None = Field(None, ge=1, le=65536)
    num_kv_heads: int | None = Field(None, ge=1, le=256, description="A decoder with grouped-query attention: "
                                     "key/value heads (num_heads must be a multiple); default the teacher's.")

    @model_validator(mode="after")
    def _consistent(self):
        if not any(v is not None for v in self.model_dump().values()):
            raise ValueError("student: set at least one of hidden_size, num_layers, num_heads, intermediate_size, "
                             "num_kv_heads")
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(f"student.hidden_size {self.hidden_size} must be a multiple of "
                             f"student.num_heads {self.num_heads}")
        if self.num_heads and self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError(f"student.num_heads {self.num_heads} must be a multiple of "
                             f"student.num_kv_heads {self.num_kv_heads}")
        return self


class DistillStage(StageConfig, TrainingSchedule):
    kind: Literal["distill"]
    teacher: str | None = Field(
        None, description="Default: the incoming model. 'stage:<n|name|kind>' (an earlier stage's model), a "
                          "checkpoint directory (relative to the recipe) or a Hugging Face Hub id (as for model:).")
    teacher_revision: str | None = Field(None, min_length=1, description="The Hub revision of a Hub id teacher: "
                                         "branch, tag or commit (default main).")
    keep_layers: list[int] | None = Field(
        None, min_length=1, description="Student = these layers of the incoming model, e.g. [0, 2, 4].")
    every: int | None = Field(
        None, ge=2, description="Student = every n-th layer counted so the last layer is kept (2 on 6: [1, 3, 5]).")
    student: StudentSpec | None = Field(None, description="Student = a smaller configuration, initialised from "
                                                          "the incoming model's leading weight slices.")
    student_architecture: Literal["bert"] | None = Field(
        None, description="Rewrite the student as BERT (an MPNet classifier only; compress.bert_student): ONNX "
                          "Runtime fuses BERT attention and not MPNet's, but MPNet's relative-position bias is dropped, "
                          "which the distillation has to make up (hidden_weight and attention_weight help). Measure "
                          "it: on the headline's 4-layer student it bought no batch-1 speed in dynamic INT8.")
    distillation: DistillationObjective = Field(
        DistillationObjective(), description="The loss: soft targets, labels, hidden states, attention maps.")
    cache_teacher: bool = Field(False, description="Compute the teacher's logits once, not every epoch (logits "
                                                   "only: not with distillation.hidden_weight/attention_weight).")
    augment: AugmentSpec | None = Field(
        None, description="A larger transfer set: altered, unlabelled copies of the training text that the teacher "
                          "labels (TinyBERT's augmentation; compress.augmentation). Text and token classification.")
    probe_examples: int = Field(64, ge=1, description="Train examples on which the distillation loss is "
                                                      "recorded before and after training.")

    trains = True
    renamed = {"temperature": "distillation.temperature", "kl_weight": "distillation.soft_target_weight",
               "ce_weight": "distillation.label_weight", "hidden_weight": "distillation.hidden_weight",
               "attention_weight": "distillation.attention_weight"}

    @field_validator("keep_layers")
    @classmethod
    def _layers_increasing(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (any(i < 0 for i in layers) or layers != sorted(set(layers))):
            raise ValueError(f"keep_layers must be distinct layer indices >= 0 in increasing order (got {layers})")
        return layers

    @field_validator("teacher")
    @classmethod
    def _teacher_named(cls, teacher: str | None) -> str | None:
        if teacher is not None and (not teacher.strip() or teacher.strip() == STAGE_REF):
            raise ValueError("teacher must name a checkpoint directory or an earlier stage ('stage:2')")
        return teacher

    @model_validator(mode="after")
    def _one_student(self):
        chosen = [n for n in ("keep_layers", "every", "student") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"distill: choose one way to build the student, not {' and '.join(chosen)}")
        if not chosen and self.teacher is None:
            raise ValueError("distill: the student would equal the teacher: set keep_layers, every or student, "
                             "or a teacher other than the incoming model")
        if self.cache_teacher and self.distillation.needs_teacher_internals:
            raise ValueError("distill: cache_teacher caches logits only; distillation.hidden_weight and "
                             "attention_weight need the teacher's forward pass every step")
        if self.augment is not None and not self.distillation.needs_teacher:
            raise ValueError("distill: augment makes text without labels, which only the teacher can label: set "
                             "distillation.soft_target_weight (or hidden_weight / attention_weight) above 0")
        return self

    def check_task(self, task) -> None:
        if self.augment is not None and not hasattr(task, "unlabelled"):
            raise ValueError(f"augment: not for {task.name} (text and token classification only)")

    def check_in_recipe(self, index: int, stages: list) -> None:
        if self.teacher and self.teacher.startswith(STAGE_REF):
            try:
                k = find_stage(self.teacher[len(STAGE_REF):], stages, index)
            except ValueError as e:
                raise ValueError(f"teacher {e}") from None
            if stages[k].produces is not TorchModel:
                raise ValueError(f"teacher '{self.teacher}' is {stages[k].produces.description}: a teacher must be "
                                 "a torch model")

    # ------------------------------------------------------------------------ run

    def check_inputs(self, recipe_path: Path) -> None:
        if self.teacher_revision is not None and (self.teacher is None or self.teacher.startswith(STAGE_REF)):
            raise CompressError("teacher_revision: only for a teacher given as a Hugging Face Hub id")
        if self.teacher and not self.teacher.startswith(STAGE_REF):
            try:
                self.checkpoint_teacher(recipe_path)
            except CompressError as e:
                raise CompressError(f"teacher: {e}") from None

    def extra_inputs(self, recipe_path: Path | None) -> list[Path]:
        # a stage's output is already covered by the fingerprints upstream; a directory is not
        return [self.checkpoint_teacher(recipe_path)] if self.teacher and not self.teacher.startswith(STAGE_REF) \
            else []

    def checkpoint_teacher(self, recipe_path: Path | None) -> Path:
        """A teacher given as a directory (relative to the recipe's directory) or a Hub id
        (its snapshot in the Hugging Face cache; compress.hub says how the two are told apart)."""
        from compress.hub import looks_like_hub_id
        from compress.models import resolve_model_dir

        path = Path(self.teacher).expanduser()
        if not path.is_absolute() and recipe_path is not None:
            path = recipe_path.parent / path
        local = path.exists() or not looks_like_hub_id(self.teacher)
        return resolve_model_dir(str(path) if local else self.teacher, self.teacher_revision)

    def teacher_dir(self, model: Artifact, ctx) -> Path:
        if self.teacher is None:
            return model.path
        if self.teacher.startswith(STAGE_REF):
            path = ctx.artifact_of(self.teacher).path
        else:
            path = self.checkpoint_teacher(ctx.recipe_path)
        if not (path / "config.json").is_file():
            raise StageError(f"teacher {self.teacher!r}: no model at {path} (was that stage skipped?)")
        return path

    def build_student(self, incoming, teacher_layers: int, same_teacher: bool):
        """(student, layer_map): layer_map[j] = the teacher layer that student layer j imitates."""
        from compress.models import block_layers
        from compress.stages.distill.student import (
            spread_layers,
            student_from_config,
            student_from_layers,
        )

        n_in = len(block_layers(incoming))
        if self.student is not None:
            s = self.student
            student, in_map = student_from_config(incoming, s.hidden_size, s.num_layers, s.num_heads,
                                                  s.intermediate_size, s.num_kv_heads)
        else:
            keep = self.keep_layers or (list(range(self.every - 1, n_in, self.every)) if self.every else None)
            if keep is not None and not keep:
                raise StageError(f"every: {self.every} keeps no layer of a {n_in}-layer model")
            student, in_map = (student_from_layers(incoming, keep), keep) if keep else (incoming, list(range(n_in)))
        n_student = len(block_layers(student))
        if self.student_architecture == "bert":
            student = _as_bert(student, attention_maps=self.distillation.attention_weight > 0)
        return student, in_map if same_teacher else spread_layers(teacher_layers, n_student)

    def run(self, model: Artifact, ctx) -> TorchModel:
        from compress.distillation import (
            DistillationModule,
            cache_teacher_logits,
            make_loss_fn,
            mean_objective_loss,
            with_teacher_logits,
        )
        from compress.hub import snapshot_of
        from compress.models import block_layers, model_structure
        from compress.training import (
            TaskEval,
            make_accelerator,
            save_trained,
            tokenized_train_split,
            train_loop,
        )

        seed = self.start(ctx)
        labels = ctx.splits.label_names
        teacher_path = self.teacher_dir(model, ctx)
        hub = snapshot_of(teacher_path)
        if hub is not None:  # the commit a Hub teacher's revision resolved to
            ctx.record(teacher_hub={"id": hub.repo_id, "revision": hub.revision, "commit": hub.commit})
        for what, path in (("incoming model", model.path), ("teacher", teacher_path)):
            if not ctx.task.is_trained_for(path, labels):
                raise StageError(f"distill: the {what} in {path} is not a {ctx.task.name} model for labels "
                                 f"{labels}: fine-tune it first")
        before = ctx.input_summary()
        incoming = ctx.task.load_model(model.path, labels, ctx.recipe.trust_remote_code)
        teacher = incoming if self.teacher is None else ctx.task.load_model(teacher_path, labels,
                                                                            ctx.recipe.trust_remote_code)
        _check_same_vocabulary(teacher, incoming)
        student, layer_map = self.build_student(incoming, len(block_layers(teacher)), self.teacher is None)
        if self.distillation.hidden_weight > 0:
            _check_last_hidden_state(teacher, layer_map)
        if self.distillation.attention_weight > 0:
            _eager_attention_(student, teacher)

        tokenizer, collate, train, validation = tokenized_train_split(model.path, ctx, self, seed)
        originals = len(train)
        if self.augment is not None:
            train = _augmented(train, self.augment, tokenizer, ctx, seed)
        collate = with_teacher_logits(collate)
        accelerator = make_accelerator(self)
        teacher.to(accelerator.device).eval().requires_grad_(False)
        if self.cache_teacher:
            train = cache_teacher_logits(teacher, train, collate, ctx.task)
        module = DistillationModule(student.train(), self.distillation, ctx.task, layer_map,
                                    teacher.config.hidden_size)
        probe = train[: min(self.probe_examples, originals)]  # the original text: augmented copies follow it
        loss_before = mean_objective_loss(module, teacher, probe, collate)
        parts: list[dict] = []
        result = train_loop(
            module, train, collate, self, make_loss_fn(teacher, self.distillation, ctx.task, parts),
            eval_fn=TaskEval(ctx.task, *validation, collate, forward=lambda m: m.student,
                             metric=ctx.metric) if validation else None,
            checkpoint_dir=ctx.checkpoint_dir, resume_key=ctx.fingerprint, seed=seed, desc="distill",
            accelerator=accelerator,
        )
        loss_after = mean_objective_loss(result.model, teacher, probe, collate)
        trained = result.model.student
        out = save_trained(result, ctx.artifact_dir, tokenizer, model=trained)
        ctx.record(
            input=before,
            teacher={"path": str(teacher_path), "structure": model_structure(teacher)},
            student={"structure": model_structure(trained), "layer_map": layer_map,
                     "projections": module.projections is not None},
            distillation_loss={"before": round(loss_before, 5), "after": round(loss_after, 5),
                               "probe_examples": len(probe), "parts_final": _mean_tail(parts)},
            cached_teacher_logits=self.cache_teacher,
            training=result.record(self.batch_size, self.gradient_accumulation_steps, seed),
        )
        return out


def _augmented(train: list[dict], spec: AugmentSpec, tokenizer, ctx, seed: int) -> list[dict]:
    from compress.augmentation import augmented_features

    out = augmented_features(train, spec, set(tokenizer.all_special_ids), tokenizer.mask_token_id,
                             ctx.task.unlabelled, seed)
    ctx.record(augmentation={**spec.model_dump(), "original_examples": len(train), "transfer_set": len(out)})
    return out


def _as_bert(student, attention_maps: bool):
    from compress.bert_student import mpnet_as_bert

    try:
        bert = mpnet_as_bert(student)
    except ValueError as e:
        raise StageError(f"student_architecture: bert: {e}") from None
    if attention_maps:  # the maps come from the eager attention only
        bert.set_attn_implementation("eager")
    return bert


def _check_same_vocabulary(teacher, incoming) -> None:
    """Teacher and student read the same token ids (one tokenizer encodes the text for both)."""
    rows = teacher.get_input_embeddings().num_embeddings, incoming.get_input_embeddings().num_embeddings
    if rows[0] != rows[1]:
        raise StageError(f"distill.teacher: its vocabulary ({rows[0]} tokens) is not the incoming model's "
                         f"({rows[1]}): put prune_vocabulary after distill, where one vocabulary serves both")


def _check_last_hidden_state(teacher, layer_map: list[int]) -> None:
    """transformers gives a decoder's last hidden state after the final norm and the others
    before it: the student's last layer can only be compared with the teacher's last one."""
    from compress.blocks import layout_of

    last = len(layout_of(teacher).layers()) - 1
    if layout_of(teacher).kind == "decoder" and layer_map[-1] != last:
        raise StageError(f"distillation.hidden_weight: the student's last layer would imitate teacher layer "
                         f"{layer_map[-1]}, but a decoder's last hidden state is taken after its final norm: keep "
                         f"the teacher's last layer ({last}) in keep_layers")


def _eager_attention_(*models) -> None:
    """Attention maps come only from the eager attention: a decoder (SDPA by default in
    transformers) switches to it for training; an encoder returns its maps as it is."""
    from compress.blocks import find_layout

    for model in models:
        layout = find_layout(model)
        if layout is not None and layout.kind == "decoder":
            model.set_attn_implementation("eager")


def _mean_tail(parts: list[dict], n: int = 20) -> dict:
    tail = parts[-n:]
    return {k: round(sum(p[k] for p in tail) / len(tail), 5) for k in tail[0]} if tail else {}
