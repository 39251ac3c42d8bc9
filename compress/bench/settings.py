"""What a benchmark measures: targets, shapes, iteration budget, threads. Shared by a
bench spec file and by a recipe's `benchmark:` block (which benchmarks its own run).

Pydantic and the target table only (no torch, no compress.recipe import): recipe.py
imports this module."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.bench.targets import TARGETS

# The names come from the target table; as a Literal, the JSON schema lists them as an enum.
TargetName = Literal[tuple(TARGETS)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapeSpec(_Spec):
    """Fixed shapes are the product batch_sizes × seq_lens; `real` adds, per batch size,
    the eval set's own lengths with dynamic padding (each batch padded to its longest)."""

    batch_sizes: list[int] = Field([1], min_length=1, description="Batch sizes to measure.")
    seq_lens: list[int] = Field([], description="Fixed sequence lengths (tokens, padded/filled).")
    real: bool = Field(True, description="Also measure the eval set's real lengths (needs eval data).")

    @field_validator("batch_sizes", "seq_lens")
    @classmethod
    def _positive_unique(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"must be positive integers (got {values})")
        if len(set(values)) != len(values):
            raise ValueError(f"must not repeat values (got {values})")
        return values

    @model_validator(mode="after")
    def _not_empty(self) -> ShapeSpec:
        if not self.real and not self.seq_lens:
            raise ValueError("no shapes to measure: seq_lens is empty and real is false")
        return self

    def cells(self) -> list[tuple[int, int | None]]:
        """(batch size, sequence length or None for real lengths), in a stable order."""
        out: list[tuple[int, int | None]] = []
        for b in self.batch_sizes:
            if self.real:
                out.append((b, None))
            out.extend((b, s) for s in self.seq_lens)
        return out


class BenchSettings(_Spec):
    targets: list[TargetName] = Field(["torch-cpu", "ort-cpu"], min_length=1)
    shapes: ShapeSpec = ShapeSpec()
    threads: list[int] = Field([2], min_length=1, description="Intra-op thread counts (each is its own cell).")
    warmup: int = Field(5, ge=0, description="Untimed runs before timing starts.")
    min_iterations: int = Field(20, ge=1, description="Timed runs: at least this many ...")
    min_seconds: float = Field(1.0, ge=0, description="... and for at least this long.")
    max_seconds: float = Field(60.0, gt=0, description="Stop timing a cell after this long (min_iterations still run).")
    accuracy: bool = Field(True, description="Measure eval accuracy once per model and target.")
    eval_batch_size: int = Field(64, ge=1)
    max_eval_samples: int | None = Field(None, ge=1, description="Cap the eval set (accuracy and real shapes).")
    cell_timeout: float = Field(1800.0, gt=0, description="Seconds before a cell's subprocess is killed.")
    repeats: int = Field(1, ge=1, le=100, description=(
        "Measure every cell this many times, each in a fresh process, in interleaved rounds (every cell once, "
        "then every cell again): a load change hits all models alike. Rows report the median of the repeats."))
    paired: bool = Field(False, description=(
        "Also time each ONNX Runtime cell against its ONNX Runtime fp32 reference in the same process, in "
        "alternating blocks of ~0.1 s on the same inputs; rows add paired_speedup, the median over block pairs "
        "of reference time / model time. A shared machine's speed drifts within seconds (README: steady "
        "numbers): this ratio repeats where separately timed cells do not. It is the speedup under alternation, "
        "which can sit below the ratio of separately timed p50s. Costs the reference's time again."))

    @field_validator("targets", "threads")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"must not repeat values (got {values})")
        return values

    @field_validator("threads")
    @classmethod
    def _threads_positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"must be positive integers (got {values})")
        return values

    @property
    def shape_cells(self) -> list[tuple[int, int | None]]:
        return self.shapes.cells()
