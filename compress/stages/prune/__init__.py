"""`prune`: make the model smaller.

structured: remove attention heads, FFN neurons and whole layers by Taylor importance on
train batches, to target fractions or a parameter budget; the model is physically smaller
(and so faster on every runtime). Then recover: fine-tune with the schedule fields on the
`distillation` objective (labels plus soft targets from the unpruned input).

unstructured: gradual magnitude pruning to `sparsity` on a cubic schedule while training,
masks made permanent at the end. Dense runtimes (ONNX Runtime, TensorRT) run the zeros like
any other weight: smaller when compressed, never faster."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from compress.artifacts import Artifact, TorchModel
from compress.errors import StageError
from compress.stages.base import (
    PruneObjective,
    StageConfig,
    TrainingSchedule,
)

log = logging.getLogger(__name__)
UNSTRUCTURED_WARNING = ("unstructured sparsity: dense runtimes (ONNX Runtime, TensorRT) gain no speed from zero "
                        "weights, only compressibility; use method: structured or distill for latency")
STRUCTURED_ONLY = ("heads", "ffn", "layers", "max_parameters", "importance_batches", "recover")
UNSTRUCTURED_ONLY = ("sparsity", "prune_every", "schedule_start", "schedule_end")


class PruneStage(StageConfig, TrainingSchedule):
    kind: Literal["prune"]
    method: Literal["structured", "unstructured"] = "structured"
    scope: Literal["global", "per_layer"] = Field(
        "global", description="Rank units across all layers (global) or remove the same share in each layer.")
    # structured
    heads: float = Field(0.0, ge=0, lt=1, description="Fraction of attention heads removed.")
    ffn: float = Field(0.0, ge=0, lt=1, description="Fraction of FFN neurons removed.")
    layers: int = Field(0, ge=0, le=256, description="Whole layers removed (least important first).")
    max_parameters: int | None = Field(
        None, ge=1, description="Parameter budget: remove heads and FFN neurons, least important per parameter "
                                "across all layers (scope does not apply), until the model fits (instead of "
                                "heads/ffn/layers).")
    importance_batches: int = Field(32, ge=1, description="Train batches the Taylor importance is summed over.")
    recover: bool = Field(True, description="Fine-tune after structured pruning (with the schedule fields).")
    # unstructured
    sparsity: float | None = Field(None, gt=0, lt=1, description="Target share of zero encoder Linear weights.")
    prune_every: int = Field(10, ge=1, description="Optimizer steps between mask updates.")
    schedule_start: float = Field(0.0, ge=0, lt=1, description="Share of training before pruning starts.")
    schedule_end: float = Field(0.75, gt=0, le=1, description="Share of training by which the target is reached.")
    # training (recovery or gradual pruning)
    distillation: PruneObjective = Field(
        PruneObjective(), description="The training loss: labels plus soft targets from the unpruned input model "
                                      "(soft_target_weight 0: plain fine-tuning on the labels).")

    trains = True
    renamed = {"kd_weight": "distillation.soft_target_weight", "temperature": "distillation.temperature"}

    @model_validator(mode="after")
    def _method_fields(self):
        given = self.model_fields_set
        wrong = [f for f in (STRUCTURED_ONLY if self.method == "unstructured" else UNSTRUCTURED_ONLY) if f in given]
        if wrong:
            other = "structured" if self.method == "unstructured" else "unstructured"
            raise ValueError(f"prune: {wrong[0]} applies to method: {other}, not {self.method}")
        if self.method == "unstructured":
            if self.sparsity is None:
                raise ValueError("prune: method unstructured needs sparsity (the target share of zero weights)")
            if self.schedule_end <= self.schedule_start:
                raise ValueError(f"prune: schedule_end ({self.schedule_end}) must be after schedule_start "
                                 f"({self.schedule_start})")
        elif self.max_parameters is not None:
            if self.heads or self.ffn or self.layers:
                raise ValueError("prune: max_parameters replaces heads/ffn/layers: set one or the other")
        elif not (self.heads or self.ffn or self.layers):
            raise ValueError("prune: nothing to remove: set heads, ffn, layers or max_parameters")
        return self

    def run(self, model: Artifact, ctx) -> TorchModel:
        from compress.models import count_parameters, model_structure
        from compress.training import tokenized_train_split

        seed = self.start(ctx)
        before = ctx.input_summary()
        net = ctx.task.load_model(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
        tokenizer, collate, examples, validation = tokenized_train_split(model.path, ctx, self, seed)
        structure, params = model_structure(net), count_parameters(net)["parameters"]
        ctx.record(input=before, method=self.method, scope=self.scope, structure_before=structure)
        if self.method == "structured":
            net = self._structured(net, examples, validation, collate, ctx, seed, model)
        else:
            net = self._unstructured(net, examples, validation, collate, ctx, seed)
        after = count_parameters(net)["parameters"]
        ctx.record(parameters_before=params, parameters_removed=params - after,
                   parameters_removed_fraction=round((params - after) / params, 4))
        if ctx.main_process:  # one writer when several processes run the stage
            net.save_pretrained(ctx.artifact_dir)
            tokenizer.save_pretrained(ctx.artifact_dir)
        return TorchModel(ctx.artifact_dir)

    # ------------------------------------------------------------------------ methods

    def _structured(self, net, examples, validation, collate, ctx, seed, artifact):
        import copy

        from compress.blocks import layout_of
        from compress.distributed import launch, shard_of
        from compress.models import model_structure
        from compress.stages.prune.importance import (
            plan_budget,
            plan_fractions,
            taylor_importance,
        )
        from compress.stages.prune.surgery import apply_plan_

        layout = layout_of(net)  # a StageError for a model that is neither encoder nor llama-style decoder
        refusal = layout.heads_refusal()
        if self.heads and refusal:
            raise StageError(f"prune.heads: {type(net).__name__} {refusal}")
        order = _seeded_order(len(examples), seed)
        n = min(len(examples), self.importance_batches * self.batch_size)
        batches = [collate([examples[i] for i in order[s : s + self.batch_size]]) for s in range(0, n, self.batch_size)]
        job = launch()
        imp = taylor_importance(net, shard_of(batches, job))  # each rank scores its share of the batches
        if job.multi:
            imp = imp.summed_over_ranks()
        # a decoder's KV groups go uniformly across layers, not unit by unit: its budget removes FFN neurons
        budget_heads = refusal is None and not layout.uniform_heads
        plan = (plan_budget(net, imp, self.max_parameters, heads=budget_heads) if self.max_parameters
                else plan_fractions(imp, self.heads, self.ffn, self.layers, self.scope, layout.uniform_heads))
        teacher = copy.deepcopy(net) if self.recover and self.distillation.needs_teacher else None
        apply_plan_(net, plan)
        ctx.record(
            importance={"batches": imp.batches, "layers": [round(float(x), 6) for x in imp.layers],
                        "heads": [[round(float(x), 6) for x in row] for row in imp.heads]},
            removed={"layers": plan.layers, "heads": {str(k): v for k, v in plan.heads.items() if v},
                     "ffn_neurons": {str(k): len(v) for k, v in plan.ffn.items() if v}},
            structure_after=model_structure(net),
        )
        if ctx.main_process:  # a record only rank 0 writes
            ctx.record(**{f"{ctx.metric}_before_recovery": _eval_metric(net, ctx, collate, artifact)})
        if not self.recover:
            return net
        return self._train(net, teacher, examples, validation, collate, ctx, seed, desc="recovery")

    def _unstructured(self, net, examples, validation, collate, ctx, seed):
        import copy

        from compress.stages.prune.surgery import (
            cubic_sparsity,
            finish_masks_,
            magnitude_prune_,
            sparsity_of,
            start_masks_,
        )

        log.warning("prune: %s", UNSTRUCTURED_WARNING)
        teacher = copy.deepcopy(net) if self.distillation.needs_teacher else None
        params = start_masks_(net)
        reached = []

        def on_step(model, step, total):
            if step % self.prune_every == 0 or step == total:
                target = cubic_sparsity(step, total, self.sparsity, self.schedule_start, self.schedule_end)
                magnitude_prune_(params, target, self.scope)
                reached.append({"step": step, "sparsity": round(target, 4)})

        net = self._train(net, teacher, examples, validation, collate, ctx, seed, desc="gradual pruning",
                          on_step=on_step)
        magnitude_prune_(params, self.sparsity, self.scope)  # the target, even after keep_best restored earlier masks
        finish_masks_(params)
        ctx.record(warning=UNSTRUCTURED_WARNING, sparsity={"target": self.sparsity, "encoder_linear": round(
            sparsity_of(params), 4), "schedule": reached})
        return net

    def _train(self, net, teacher, train, validation, collate, ctx, seed, desc, on_step=None):
        """Fine-tune `net` with the schedule fields on the distillation objective (the teacher,
        the unpruned input, is None when the objective needs none)."""
        from compress.distillation import DistillationModule, make_loss_fn
        from compress.training import TaskEval, make_accelerator, train_loop

        accelerator = make_accelerator(self)
        if teacher is not None:
            teacher.to(accelerator.device).eval().requires_grad_(False)
        module = DistillationModule(net.train(), self.distillation, ctx.task)
        result = train_loop(
            module, train, collate, self, make_loss_fn(teacher, self.distillation, ctx.task),
            eval_fn=TaskEval(ctx.task, *validation, collate, forward=lambda m: m.student,
                             metric=ctx.metric) if validation else None,
            checkpoint_dir=ctx.checkpoint_dir, resume_key=ctx.fingerprint, seed=seed, desc=desc,
            accelerator=accelerator, on_step=on_step,
        )
        ctx.record(training=result.record(self.batch_size, self.gradient_accumulation_steps, seed))
        return result.model.student


def _seeded_order(n: int, seed: int) -> list[int]:
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _eval_metric(net, ctx, collate, artifact) -> float:
    """The run's metric on the eval split right after pruning (before any recovery training)."""
    from compress.training import TaskEval

    features, references = ctx.eval_set.head(artifact, None)
    evaluate = TaskEval(ctx.task, features, references, collate, batch_size=ctx.measure.eval_batch_size,
                        metric=ctx.metric)
    return evaluate(net.eval())[ctx.metric]
