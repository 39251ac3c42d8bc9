"""The recipe's `select:` block. Light (pydantic and the target table): recipe.py imports it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.bench.settings import TargetName
from compress.bench.targets import TARGETS
from compress.stages.base import STAGE_REF, find_stage

INPUT = "input"


class SelectSpec(BaseModel):
    """Which of the run's artifacts to ship: the fastest on `target` at one shape whose metric
    is within `max_metric_drop` of the reference's. With a package stage, it packages that one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_metric_drop: float = Field(
        ge=0, le=1, description="Largest loss of the run's metric allowed against the reference (absolute, "
        "0.01 = 1 point, as ptq's max_metric_drop).")
    target: TargetName = Field("ort-cpu", description="Where the candidates are timed: a benchmark target "
                                                      "(compress targets). The run's artifacts it runs are the candidates.")
    batch_size: int = Field(1, ge=1, le=65536, description="Batch size of the timed calls.")
    seq_len: int | Literal["real"] = Field(
        "real", description="Sequence length of the timed calls, or 'real': the eval set's own lengths.")
    threads: int | None = Field(None, ge=1, le=1024, description="Intra-op threads (default: measure.threads).")
    reference: str = Field(
        INPUT, description="What the drop is measured against: 'input' (the run's input model, or the first "
        "stage with the metric when the input is a base model, as the ledger's Δ) or 'stage:<n|NN-kind|kind>'.")

    @field_validator("seq_len")
    @classmethod
    def _positive_length(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be a positive number of tokens or 'real' (got {value})")
        return value

    @field_validator("reference")
    @classmethod
    def _reference_form(cls, value: str) -> str:
        if value != INPUT and not value.startswith(STAGE_REF):
            raise ValueError(f"must be '{INPUT}' or '{STAGE_REF}<n|NN-kind|kind>' (got {value!r})")
        return value

    @property
    def shape(self) -> str:
        """The shape label a benchmark row uses (b1xreal, b8x128)."""
        return f"b{self.batch_size}x{self.seq_len}"

    def check_in_recipe(self, stages: list) -> None:
        """Against the stages: the reference names one before the final stage, some stage makes what
        the target runs, and a package stage can ship it. Raises ValueError naming the field."""
        final = next((i for i, s in enumerate(stages) if s.final), len(stages))
        if self.reference != INPUT:
            try:
                find_stage(self.reference[len(STAGE_REF):], list(stages), final)
            except ValueError as e:  # names the stages it can be
                raise ValueError(f"reference: {e}") from None
        runs = TARGETS[self.target].accepts
        if final < len(stages) and runs not in stages[final].accepts:
            fit = ", ".join(n for n, t in TARGETS.items() if t.accepts in stages[final].accepts)
            raise ValueError(f"target: {self.target} runs {runs.description}, which the {stages[final].kind} "
                             f"stage cannot ship (choose {fit})")
        if not any(s.produces is runs for s in stages[:final]):
            raise ValueError(f"target: {self.target} runs {runs.description} and no stage before "
                             f"{'the ' + stages[final].kind + ' stage' if final < len(stages) else 'the end'} "
                             "makes one")
