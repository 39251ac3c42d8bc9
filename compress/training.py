"""The training loop (Accelerate-ready: the same code runs on a CPU, a GPU, or several
processes under torchrun / accelerate launch)."""

from __future__ import annotations

import logging
import math
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from compress.artifacts import Artifact, TorchModel
from compress.data import encode, pad_batch
from compress.models import load_classifier, load_tokenizer

log = logging.getLogger(__name__)


def _optimizer(model, lr: float, weight_decay: float):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)  # no decay on biases and LayerNorm
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def finetune_classifier(model: Artifact, stage, ctx) -> TorchModel:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    recipe = ctx.recipe
    seed = stage.seed if stage.seed is not None else recipe.data.seed
    set_seed(seed)
    torch.set_num_threads(ctx.measure.threads)
    splits = ctx.splits
    net = load_classifier(model.path, splits.label_names, recipe.trust_remote_code)
    tokenizer = load_tokenizer(model.path, recipe.trust_remote_code)
    input_names = list(tokenizer.model_input_names)
    pad_id = tokenizer.pad_token_id or 0
    examples = [
        {**enc, "label": label}
        for enc, label in zip(encode(tokenizer, splits.train, recipe.data.max_length), splits.train.labels)
    ]

    def collate(batch: list[dict]) -> dict:
        arrays = pad_batch(batch, input_names, pad_id)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        tensors["labels"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
        return tensors

    loader = DataLoader(
        examples, batch_size=stage.batch_size, shuffle=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    accum = stage.gradient_accumulation_steps
    steps_per_epoch = max(1, len(loader) // accum)
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
    optimizer = _optimizer(net, stage.learning_rate, stage.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(stage.warmup_ratio * total_steps), total_steps)

    accelerator = Accelerator(gradient_accumulation_steps=accum)
    net, optimizer, loader, scheduler = accelerator.prepare(net, optimizer, loader, scheduler)
    net.train()
    step, losses, started = 0, [], time.perf_counter()
    columns = (TextColumn("finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not accelerator.is_local_main_process) as progress:
        task = progress.add_task("train", total=total_steps, loss="-")
        while step < total_steps:
            for batch in loader:
                with accelerator.accumulate(net):
                    loss = net(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(net.parameters(), stage.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                losses.append(float(loss.detach()))
                if accelerator.sync_gradients:
                    step += 1
                    progress.update(task, advance=1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
                    if step >= total_steps:
                        break

    accelerator.wait_for_everyone()
    out = TorchModel(ctx.artifact_dir)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(net).eval()
        unwrapped.save_pretrained(out.path)
        tokenizer.save_pretrained(out.path)
    ctx.record(
        training={
            "steps": step,
            "epochs": round(step * accum * stage.batch_size / max(1, len(examples)), 3),
            "train_examples": len(examples),
            "seed": seed,
            "first_loss": round(losses[0], 5) if losses else None,
            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 5) if losses else None,
            "seconds": round(time.perf_counter() - started, 1),
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
        }
    )
    return out
