"""`finetune`: train the task head and the encoder on the train split."""

from __future__ import annotations

from typing import Literal

from compress.artifacts import Artifact, TorchModel
from compress.stages.base import StageConfig, TrainingSchedule


class FinetuneStage(StageConfig, TrainingSchedule):
    kind: Literal["finetune"]

    trains = True

    def run(self, model: Artifact, ctx) -> TorchModel:
        import torch
        from accelerate.utils import set_seed

        from compress.models import load_classifier, load_tokenizer
        from compress.training import (accuracy_eval, classification_collate, classification_examples,
                                       save_trained, split_validation, train_loop)

        seed = self.seed if self.seed is not None else ctx.recipe.data.seed
        set_seed(seed)  # the new head's initialisation
        torch.set_num_threads(ctx.measure.threads)
        net = load_classifier(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
        tokenizer = load_tokenizer(model.path, ctx.recipe.trust_remote_code)
        collate = classification_collate(tokenizer)
        examples = classification_examples(tokenizer, ctx.splits.train, ctx.recipe.data.max_length)
        train, validation = split_validation(examples, self, seed)
        result = train_loop(
            net, train, collate, self, loss_fn=lambda m, batch: m(**batch).loss,
            eval_fn=accuracy_eval(validation, collate) if validation else None,
            checkpoint_dir=ctx.checkpoint_dir, resume_key=ctx.fingerprint, seed=seed, desc="finetune",
        )
        out = save_trained(result, ctx.artifact_dir, tokenizer)
        ctx.record(training=result.record(self.batch_size, self.gradient_accumulation_steps, seed))
        return out
