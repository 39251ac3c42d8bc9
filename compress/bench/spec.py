"""A benchmark spec file (YAML): the models to compare plus BenchSettings. Errors are one
line naming the spec file and the field, like the recipe loader's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from compress.bench.settings import BenchSettings, ShapeSpec, TargetName, _Spec
from compress.data import DataSpec
from compress.errors import CompressError
from compress.locations import resolve_data_location, resolve_location
from compress.yaml_input import describe_validation_error, read_yaml_file


class BenchSpecError(CompressError):
    """The bench spec (or a model it names) is malformed: exit 2 before anything runs."""


class ModelRef(_Spec):
    path: str = Field(description="A run directory, a torch checkpoint directory, an .onnx file or a .engine file.")
    name: str | None = Field(None, description="Row label (default: derived from the path).")
    targets: list[TargetName] | None = Field(None, description="Only these targets (default: every spec target that runs this kind).")

    @field_validator("path")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise ValueError("must be a path (got an empty string or a NUL byte)")
        return value


class BenchSpec(BenchSettings):
    name: str = Field("bench", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    models: list[ModelRef] = Field(min_length=1)
    baseline: str | None = Field(None, description="The uncompressed torch model (default: a run's first stage).")
    ort_baseline: str | None = Field(
        None, description="The ONNX Runtime fp32 model the 'vs ORT fp32' speedups are against (an .onnx file or "
        "ONNX directory; default: the export_onnx of the baseline model itself, where the spec has one).")
    data: DataSpec | None = Field(None, description="Eval data (default for run directories: the run's eval split).")
    task: str = Field("text-classification", description="The task of models given as files or checkpoints "
                                                         "(a run directory's manifest names its own).")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        from compress.tasks import get_task

        get_task(task)  # ValueError naming the supported tasks, as a recipe's task gets
        return task

    @field_validator("models", mode="before")
    @classmethod
    def _strings_are_paths(cls, value):
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value


def bench_spec_json_schema() -> dict:
    """The bench spec's JSON schema (`compress schema --bench`); a model may also be a bare path."""
    schema = BenchSpec.model_json_schema()
    items = schema["properties"]["models"]["items"]
    schema["properties"]["models"]["items"] = {"anyOf": [{"type": "string", "description": "A model path."}, items]}
    return schema


_FIELDS = sorted({n for cls in (BenchSpec, ShapeSpec, ModelRef, DataSpec) for n in cls.model_fields})


def parse_settings(raw: object, cls: type = BenchSpec, where: str = "spec"):
    if not isinstance(raw, dict):
        raise BenchSpecError(f"{where}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise BenchSpecError(f"{where}: {describe_validation_error(e, _FIELDS)}") from None


def load_bench_spec(path: str | Path) -> BenchSpec:
    """Parse and validate a spec; relative paths resolve against the spec's directory."""
    path = Path(path)
    raw = read_yaml_file(path, "bench spec", BenchSpecError)
    spec = parse_settings(raw, BenchSpec, str(path))

    def resolve(p: str | None, field: str) -> str | None:
        return resolve_location(p, path.parent, f"{path}: {field}", BenchSpecError)

    models = [m.model_copy(update={"path": resolve(m.path, f"models[{i}].path")}) for i, m in enumerate(spec.models)]
    def resolve_data(p: str | None, field: str) -> str | None:
        return resolve_data_location(p, path.parent, f"{path}: {field}", BenchSpecError)

    data = spec.data and spec.data.model_copy(
        update={"train": resolve_data(spec.data.train, "data.train"), "eval": resolve_data(spec.data.eval, "data.eval")})
    return spec.model_copy(update={"models": models, "baseline": resolve(spec.baseline, "baseline"),
                                   "ort_baseline": resolve(spec.ort_baseline, "ort_baseline"), "data": data})
