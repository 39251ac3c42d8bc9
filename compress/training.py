"""The one training loop shared by finetune, distill and qat.

Built on HF Accelerate, so the same code runs on a CPU, a GPU or several processes under
torchrun / accelerate launch. A stage supplies the examples, a collate function and a
`loss_fn(model, batch) -> loss`; the loop owns the schedule (epochs or steps, warm-up, LR
decay, gradient accumulation), periodic evaluation with keep-best, and mid-stage
checkpoints that a rerun resumes from (the data order is a pure function of seed and
epoch, so skipping the batches already seen replays exactly the same run)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.files import replace_dir
from compress.resume import STATE_FILE

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: Any  # the trained (unwrapped) model; the best one when keep-best was on
    steps: int
    losses: list[float]
    train_examples: int
    seconds: float
    processes: int
    device: str
    resumed_from: int | None = None  # optimizer step the run resumed at, if it did
    evaluations: list[dict] = field(default_factory=list)  # {"step": n, **metrics}
    best_step: int | None = None
    is_main_process: bool = True
    mixed_precision: str = "no"
    threads: int | None = None

    def record(self, batch_size: int, accum: int, seed: int) -> dict:
        """What a stage writes to stage.json about its training."""
        tail = self.losses[-20:]
        global_batch = batch_size * accum * self.processes
        return {
            "steps": self.steps,
            "epochs": round(self.steps * global_batch / max(1, self.train_examples), 3),
            "train_examples": self.train_examples,
            "per_device_batch_size": batch_size,
            "gradient_accumulation_steps": accum,
            "global_batch_size": global_batch,  # examples per optimizer step, all processes together
            "mixed_precision": self.mixed_precision,
            "threads_per_process": self.threads,
            "seed": seed,
            "first_loss": round(self.losses[0], 5) if self.losses else None,
            "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
            "seconds": round(self.seconds, 1),
            "processes": self.processes,
            "device": self.device,
            "resumed_from_step": self.resumed_from,
            "evaluations": self.evaluations or None,
            "best_step": self.best_step,
        }


class EpochOrder:
    """A sampler whose order depends only on (seed, epoch): a resumed run sees the same
    batches as an uninterrupted one, and no draw touches the global RNG."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def make_optimizer(model, lr: float, weight_decay: float):
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)  # no decay on biases and LayerNorm
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def make_accelerator(schedule):
    """The Accelerator for a TrainingSchedule (gradient accumulation, mixed precision); CPU-only
    when there is no GPU, so gloo runs several CPU processes."""
    import torch
    from accelerate import Accelerator

    from compress.errors import StageError

    gpu = torch.cuda.is_available()
    if schedule.mixed_precision == "fp16" and not gpu:
        raise StageError("mixed_precision: fp16 needs a GPU and this machine has none; use bf16 (CPUs run it) or no")
    # Accelerate keeps one process-wide state and refuses a second mixed_precision: each stage is
    # its own training job, so its settings replace the last stage's (the process group stays).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(gradient_accumulation_steps=schedule.gradient_accumulation_steps, cpu=not gpu,
                       mixed_precision=schedule.mixed_precision)


def train_loop(
    model,
    examples: list,
    collate: Callable[[list], dict],
    schedule,
    loss_fn: Callable[[Any, dict], Any],
    eval_fn: Callable[[Any], dict] | None = None,
    checkpoint_dir: Path | None = None,
    resume_key: str | None = None,
    seed: int = 0,
    desc: str = "train",
    accelerator=None,
    on_step: Callable[[Any, int, int], None] | None = None,
) -> TrainResult:
    """Train `model` on `examples` by `schedule` (a TrainingSchedule). eval_fn(model) returns
    metrics whose `eval_fn.metric` drives keep-best (higher is better, unless eval_fn.is_better
    says otherwise: perplexity). on_step(model, step, total) runs after each optimizer step (e.g.
    gradual pruning masks). loss_fn must call `model(...)` itself (not a sub-module), so
    DistributedDataParallel syncs every gradient: a stage with extra trainable parts
    (distillation projections) wraps them into one module. Checkpoints every
    schedule.checkpoint_every steps go to checkpoint_dir and are resumed when their
    resume_key matches."""
    import torch
    from accelerate import skip_first_batches
    from accelerate.utils import set_seed
    from rich.progress import TextColumn
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from compress.progress import counted_columns, make_progress

    set_seed(seed)
    accum = schedule.gradient_accumulation_steps
    accelerator = accelerator or make_accelerator(schedule)
    order = EpochOrder(len(examples), seed)
    # own generator: creating the iterator must not draw from the global RNG (resume replays it)
    loader = DataLoader(examples, batch_size=schedule.batch_size, sampler=order, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = make_optimizer(model, schedule.learning_rate, schedule.weight_decay)
    batches_per_epoch = math.ceil(len(examples) / schedule.batch_size / accelerator.num_processes)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accum))
    total = schedule.max_steps or max(1, math.ceil(schedule.epochs * steps_per_epoch))
    lr_schedule = get_scheduler(schedule.lr_scheduler, optimizer, int(schedule.warmup_ratio * total), total)
    # The LR schedule is not prepared: Accelerate's wrapper steps it once per process on every
    # optimizer step (it assumes a schedule sized for one process), which under N processes
    # decays the LR N times too fast. `total` already counts optimizer steps of the whole job,
    # so it is stepped once per optimizer step below, and checkpointed with the rest.
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(lr_schedule)

    step, epoch, batch_in_epoch, losses = 0, 0, 0, []
    evaluations, best = [], None
    resumed = _load_checkpoint(accelerator, checkpoint_dir, resume_key)
    if resumed:
        step, epoch, batch_in_epoch, losses = resumed["step"], resumed["epoch"], resumed["batch"], resumed["losses"]
        evaluations, best = resumed["evaluations"], resumed.get("best")
        log.info("%s: resuming from step %d (checkpoint in %s)", desc, step, checkpoint_dir)
        if best is not None:
            best["state"] = torch.load(checkpoint_dir / "best.pt", weights_only=True)
    started = time.perf_counter()
    model.train()
    columns = counted_columns(TextColumn("loss {task.fields[loss]}"))
    # the finished training bar stays on screen (transient=False), unlike the steps' bars
    with make_progress(*columns, transient=False, disable=not accelerator.is_local_main_process) as progress:
        task = progress.add_task(desc, total=total, completed=step, loss="-")
        while step < total:
            batches = skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
            # accelerate's loader re-sets the sampler's epoch from its own iteration counter on
            # every pass (a fresh or skipping loader starts at 0): pin both to our epoch
            batches.set_epoch(epoch)
            order.set_epoch(epoch)
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = loss_fn(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), schedule.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:  # an optimizer step, not an accumulation micro-batch
                        lr_schedule.step()
                    optimizer.zero_grad()
                # the loss of the whole job's micro-batch (every rank records the same numbers)
                losses.append(float(accelerator.reduce(loss.detach(), "mean")))  # a copy on one process
                batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if on_step is not None:
                    on_step(accelerator.unwrap_model(model), step, total)
                progress.update(task, advance=1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
                if eval_fn and schedule.eval_every and (step % schedule.eval_every == 0 or step == total):
                    best = _evaluate(model, accelerator, eval_fn, step, evaluations, best, schedule.keep_best)
                if checkpoint_dir and schedule.checkpoint_every and step % schedule.checkpoint_every == 0 \
                        and step < total:
                    _save_checkpoint(accelerator, checkpoint_dir, resume_key, step, epoch, batch_in_epoch,
                                     losses, evaluations, best)
                if step >= total:
                    break
            else:  # the epoch ran out before the step budget
                epoch, batch_in_epoch = epoch + 1, 0

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if best is not None and schedule.keep_best:
        unwrapped.load_state_dict(best["state"])
        log.info("%s: keeping the best evaluation (step %d, %s %.4f)", desc, best["step"], best["metric"], best["value"])
    if checkpoint_dir and schedule.checkpoint_every and not (resumed and resumed["step"] == step):
        # The finished state, kept until the stage completes (the stage removes it): a failure
        # while saving or measuring the trained model must not cost the training itself.
        _save_checkpoint(accelerator, checkpoint_dir, resume_key, step, epoch, batch_in_epoch,
                         losses, evaluations, best)
    return TrainResult(
        model=unwrapped.eval(), steps=step, losses=losses, train_examples=len(examples),
        seconds=time.perf_counter() - started, processes=accelerator.num_processes,
        device=str(accelerator.device), resumed_from=resumed["step"] if resumed else None,
        evaluations=evaluations, best_step=best["step"] if best else None,
        is_main_process=accelerator.is_main_process, mixed_precision=str(accelerator.mixed_precision),
        threads=torch.get_num_threads(),
    )


def _evaluate(model, accelerator, eval_fn, step, evaluations, best, keep_best) -> dict | None:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    metrics = eval_fn(unwrapped)
    unwrapped.train()
    evaluations.append({"step": step, **metrics})
    log.info("step %d: %s", step, ", ".join(f"{k} {v}" for k, v in metrics.items()))
    key = getattr(eval_fn, "metric", "accuracy")
    better = getattr(eval_fn, "is_better", lambda value, than: value > than)  # higher-is-better by default
    if keep_best and (best is None or better(metrics[key], best["value"])):
        state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        return {"step": step, "metric": key, "value": metrics[key], "state": state}
    return best


def _save_checkpoint(accelerator, directory: Path, key, step, epoch, batch, losses, evaluations, best) -> None:
    """accelerate's state (model, optimizer, LR schedule, RNG) plus our counters, written to a
    temporary directory and renamed, so a kill mid-write leaves the previous checkpoint."""
    import torch

    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if best is not None:
            torch.save(best["state"], tmp / "best.pt")
        meta = {"resume_key": key, "processes": accelerator.num_processes,
                "step": step, "epoch": epoch, "batch": batch, "losses": losses,
                "evaluations": evaluations,
                "best": {k: v for k, v in best.items() if k != "state"} if best else None}
        (tmp / STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")
        replace_dir(tmp, directory)
    accelerator.wait_for_everyone()
    log.debug("checkpoint at step %d in %s", step, directory)


def _load_checkpoint(accelerator, directory: Path | None, key) -> dict | None:
    if directory is None or not (directory / STATE_FILE).is_file():
        return None
    meta = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    if meta.get("resume_key") != key:
        log.warning("ignoring a checkpoint in %s written for other inputs", directory)
        return None
    written_by = meta.get("processes", 1)
    if written_by != accelerator.num_processes:  # the data shards and RNG states are per process
        log.warning("the checkpoint in %s was written by %d processes and this run has %d: the stage restarts "
                    "from step 0 (resuming needs the same number of processes)", directory, written_by,
                    accelerator.num_processes)
        return None
    accelerator.load_state(str(directory))
    return meta



# ---------------------------------------------------------------------------- stage helpers


def split_validation(dataset, schedule, seed: int):
    """(train, validation): a seeded slice of the train split's examples held out for
    eval_every / keep_best, so model selection never sees the eval split that every stage is
    measured on. Validation is None when nothing evaluates during training."""
    if not schedule.eval_every:
        return dataset, None
    import random

    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * schedule.validation_fraction))
    return dataset.subset(order[n_val:]), dataset.subset(order[:n_val])


def save_trained(result: TrainResult, out_dir: Path, tokenizer, model=None):
    """Save the trained model (main process only) as a TorchModel artifact."""
    from compress.artifacts import TorchModel

    if result.is_main_process:
        (model or result.model).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return TorchModel(out_dir)


# ---------------------------------------------------------------------------- task helpers


def tokenized_train_split(model_path: Path, ctx, schedule, seed: int):
    """The model's own tokenizer, the task's collate function, the train split's features and
    the held-out validation slice as (features, references), or None (see split_validation)."""
    from compress.models import load_tokenizer

    tokenizer = load_tokenizer(model_path, ctx.recipe.trust_remote_code)
    train, validation = split_validation(ctx.splits.train, schedule, seed)
    max_length = ctx.recipe.data.max_length
    features = ctx.task.encode(tokenizer, train, max_length)
    held_out = None
    if validation is not None:
        held_out = (ctx.task.encode(tokenizer, validation, max_length), ctx.task.references(validation))
    return tokenizer, ctx.task.collate(tokenizer), features, held_out


class TaskEval:
    """eval_fn for train_loop: the task's scalar metrics of `forward(model)` (default: the model
    itself) on features with their references; `metric` names the one keep-best compares."""

    def __init__(self, task, features: list[dict], references: list, collate, batch_size: int = 64,
                 forward=None, metric: str | None = None):
        self.task, self.features, self.references, self.collate = task, features, references, collate
        self.batch_size, self.forward = batch_size, forward
        self.metric = metric or task.primary_metric

    def __call__(self, model) -> dict:
        import torch

        from compress.tasks import per_example_outputs, rounded, torch_outputs

        net = self.forward(model) if self.forward else model
        device = next(net.parameters()).device
        outputs = []
        with torch.no_grad():
            for start in range(0, len(self.features), self.batch_size):
                chunk = self.features[start : start + self.batch_size]
                batch = {k: v.to(device) for k, v in self.collate(chunk).items() if k not in self.task.target_keys}
                out = torch_outputs(net(**batch), self.task).float().cpu().numpy()
                host = {k: v.cpu().numpy() for k, v in batch.items()}
                outputs.extend(per_example_outputs(self.task, out, host, [len(f["input_ids"]) for f in chunk]))
        metrics = self.task.metrics(outputs, self.features, self.references)
        # an evaluation in stage.json lists the scalar metrics only
        return rounded({k: metrics[k] for k in self.task.metric_names})

    def is_better(self, value: float, than: float) -> bool:
        """keep_best's comparison: the metric's own direction (perplexity: lower)."""
        from compress.tasks import is_better

        return is_better(self.task, self.metric, value, than)
