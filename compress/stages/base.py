"""The stage contract: a frozen pydantic config with a `run` that takes one artifact
and returns a new one written into the stage's own directory; and the blocks shared by the
stages that train: the schedule fields and the distillation objective (light: no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.artifacts import Artifact, TorchModel

if TYPE_CHECKING:
    from compress.context import StageContext


STAGE_REF = "stage:"  # a reference to an earlier stage's artifact: stage:2, stage:02-finetune, stage:finetune


def find_stage(ref: str, stages: list, before: int) -> int:
    """Index of the earlier stage a 'stage:<ref>' names: its number (2, 02), directory name
    (02-finetune) or kind (the latest earlier stage of that kind)."""
    for k in range(before - 1, -1, -1):
        if ref in (str(k + 1), f"{k + 1:02d}", f"{k + 1:02d}-{stages[k].kind}", stages[k].kind):
            return k
    names = ", ".join(f"{k + 1:02d}-{s.kind}" for k, s in enumerate(stages[:before])) or "none"
    raise ValueError(f"'{STAGE_REF}{ref}' names no earlier stage (earlier stages: {names})")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accepts: ClassVar[tuple[type[Artifact], ...]] = (TorchModel,)
    produces: ClassVar[type[Artifact]] = TorchModel
    trains: ClassVar[bool] = False  # needs the train split
    final: ClassVar[bool] = False  # must be the last stage of a recipe (e.g. package)
    keeps_model: ClassVar[bool] = False  # ships its input's model unchanged (package): no latency verdict
    renamed: ClassVar[dict[str, str]] = {}  # old field name -> its new name, refused with one line

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed(cls, data):
        """A field given under its old name fails with one line naming the new one."""
        if isinstance(data, dict):
            for old, new in cls.renamed.items():
                if old in data:
                    kind = cls.model_fields["kind"].annotation.__args__[0]
                    raise ValueError(f"{kind}: {old} is renamed to {new}")
        return data

    def unavailable_reason(self) -> str | None:
        """Why this stage cannot run on this machine (missing GPU or package), or None.
        Such a stage is skipped with the reason and its input passes through unchanged."""
        return None

    def check_in_recipe(self, index: int, stages: list) -> None:
        """Checks that need the other stages (e.g. a reference to an earlier stage's output);
        raise ValueError with a message naming the field."""

    def check_task(self, task) -> None:
        """Checks that need the recipe's task (a compress.tasks module); raise ValueError with a
        message naming the field."""

    def check_inputs(self, recipe_path: Path) -> None:
        """Cheap checks, when a recipe is loaded, of models or files the stage names (e.g. a
        teacher); raise CompressError with a message that starts with the field's name."""

    def extra_inputs(self, recipe_path: Path | None) -> list[Path]:
        """Directories besides the incoming artifact that the output depends on (e.g. a teacher
        checkpoint): their content joins the stage's fingerprint, so a changed one reruns it."""
        return []

    def run(self, model: Artifact, ctx: StageContext) -> Artifact:  # pragma: no cover - abstract
        raise NotImplementedError


class TrainingSchedule(BaseModel):
    """Schedule fields shared by every stage that trains (finetune, distill, prune, qat)."""

    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the train split (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="LR decay after the warm-up.")
    batch_size: int = Field(32, ge=1, le=65536, description="Examples per process (per device) per micro-batch; "
                                                          "the global batch is batch_size x processes x "
                                                          "gradient_accumulation_steps.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Autocast the forward pass: fp16 needs a GPU; bf16 runs on GPUs and on CPUs. Weights "
                          "stay fp32 (the saved model too).")
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads per training process. Default: this machine's "
                                         "cores shared among the training processes on it (measure.threads sets "
                                         "the threads of measurement only).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int | None = Field(None, description="Training seed; defaults to data.seed.")
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps on a validation slice held out of train.")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out when eval_every is set.")
    keep_best: bool = Field(False, description="Return the weights of the best evaluation (needs eval_every).")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Save the training state every N steps; a rerun after a crash resumes from it.")

    def start(self, ctx) -> int:
        """Seed every RNG (the stage's seed, else data.seed) and set torch's threads, before the
        model is built or loaded (a new head is initialised from it); returns the seed."""
        import torch
        from accelerate.utils import set_seed

        seed = self.seed if self.seed is not None else ctx.recipe.data.seed
        set_seed(seed)
        torch.set_num_threads(self.training_threads())
        return seed

    def training_threads(self) -> int:
        from compress.distributed import launch
        from compress.environment import usable_cores

        if self.threads is not None:
            return self.threads
        return max(1, usable_cores() // launch().local_world_size)

    @model_validator(mode="after")
    def _keep_best_needs_eval(self):
        if self.keep_best and not self.eval_every:
            raise ValueError("keep_best needs eval_every (how often to evaluate)")
        return self


class QuantizedParity(BaseModel):
    """The parity criterion of a quantized (Q/DQ) graph, shared by qat and optimize_onnx
    (compress/parity.py): task outputs agree on at least min_agreement of the parity samples,
    and no logit moves by more than parity_steps quantization steps of the last quantized
    MatMul's input (its activation scale times its weight's largest column L1 norm)."""

    parity_steps: float = Field(
        2.0, gt=0, le=100, description="Logit tolerance in quantization steps: every input of the last quantized "
        "MatMul moved by this many levels in the worst direction (read from the graph's scales and weights). "
        "A short QAT of MiniLM moved its logits by 0.71 steps (export) and 0.55 (fusion): "
        "benchmarks/results/quantization/parity-probe.json.")
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="Least share of parity samples whose task output (label, tags, span) "
        "must agree.")

    def criterion_for(self, onnx_path: Path, atol: float | None, float_atol: float, what: str,
                         keeps_quantization: bool = True) -> dict:
        """check_parity's criterion: the atol given; else, for a Q/DQ graph whose quantization the
        candidate keeps, parity_steps of its logit step with min_agreement; else float_atol."""
        from compress.onnx_graph import onnx_precision
        from compress.parity import quantized_criterion

        if atol is not None:
            return {"atol": atol}
        if keeps_quantization and onnx_precision(onnx_path).startswith("int8"):
            return quantized_criterion(onnx_path, self.parity_steps, self.min_agreement, what)
        return {"atol": float_atol}


# ---------------------------------------------------------------------------- distillation objective

Temperature = Annotated[float, Field(gt=0, le=100, description="Softens the teacher's and the student's "
                                                                 "distributions in the soft-target term.")]
SoftTargetWeight = Annotated[float, Field(ge=0, description="KL(teacher || student) on the temperature-softened "
                                                             "distributions, scaled by T^2.")]
LabelWeight = Annotated[float, Field(ge=0, description="Cross-entropy on the true labels.")]
HiddenWeight = Annotated[float, Field(ge=0, description="MSE between mapped hidden states (learned projection "
                                                         "where widths differ).")]
AttentionWeight = Annotated[float, Field(ge=0, description="MSE between mapped attention maps.")]


class DistillationObjective(BaseModel):
    """What a training stage minimises: the plain weighted sum
    soft_target_weight * T^2 * KL(teacher || student at T) + label_weight * CE(labels)
    + hidden_weight * hidden MSE + attention_weight * attention MSE.
    The same model in distill, prune and qat; each stage sets its own defaults (these are distill's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: Temperature = 2.0
    soft_target_weight: SoftTargetWeight = 1.0
    label_weight: LabelWeight = 0.5
    hidden_weight: HiddenWeight = 0.0
    attention_weight: AttentionWeight = 0.0

    @property
    def needs_teacher(self) -> bool:
        return self.soft_target_weight > 0 or self.needs_teacher_internals

    @property
    def needs_teacher_internals(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    @model_validator(mode="after")
    def _some_weight(self):
        if not any((self.soft_target_weight, self.label_weight, self.hidden_weight, self.attention_weight)):
            raise ValueError("every loss weight is 0 (soft_target_weight, label_weight, hidden_weight, "
                             "attention_weight)")
        return self


class LogitObjective(DistillationObjective):
    """The objective of a stage whose student keeps the teacher's layers (prune, qat): logits and
    labels only, no layer map for hidden-state or attention terms."""

    @model_validator(mode="after")
    def _logits_only(self):
        given = [n for n in ("hidden_weight", "attention_weight") if getattr(self, n)]
        if given:
            raise ValueError(f"{given[0]} applies to distill only (here the objective compares logits and labels)")
        return self


class PruneObjective(LogitObjective):
    """prune's defaults: labels plus soft targets from the unpruned input model."""

    label_weight: LabelWeight = 1.0


class QATObjective(LogitObjective):
    """qat's defaults: labels only (soft_target_weight > 0 adds the float input model as teacher)."""

    soft_target_weight: SoftTargetWeight = 0.0
    label_weight: LabelWeight = 1.0
