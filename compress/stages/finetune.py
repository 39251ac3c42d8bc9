"""`finetune`: train the task head and the encoder on the train split."""

from __future__ import annotations

from typing import Literal

from compress.artifacts import Artifact, TorchModel
from compress.stages.base import StageConfig, TrainingSchedule


class FinetuneStage(StageConfig, TrainingSchedule):
    kind: Literal["finetune"]

    trains = True

    def run(self, model: Artifact, ctx) -> TorchModel:
        from compress.training import (
            TaskEval,
            save_trained,
            tokenized_train_split,
            train_loop,
        )

        seed = self.start(ctx)  # before the new head's initialisation
        net = ctx.task.load_model(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
        tokenizer, collate, train, validation = tokenized_train_split(model.path, ctx, self, seed)
        result = train_loop(
            net, train, collate, self, loss_fn=lambda m, batch: m(**batch).loss,
            eval_fn=TaskEval(ctx.task, *validation, collate, metric=ctx.metric) if validation else None,
            checkpoint_dir=ctx.checkpoint_dir, resume_key=ctx.fingerprint, seed=seed, desc="finetune",
        )
        out = save_trained(result, ctx.artifact_dir, tokenizer)
        ctx.record(training=result.record(self.batch_size, self.gradient_accumulation_steps, seed))
        return out
