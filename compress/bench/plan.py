"""From a spec to the list of cells: models (run directories expanded to each stage's
artifact), targets, shapes and thread counts. Every problem the user can fix (a missing
model, an engine on ort-cpu, no eval data for real lengths) is raised here, before
anything is measured."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from compress.artifacts import (
    ARTIFACT_KINDS,
    Artifact,
    ONNXModel,
    TorchModel,
    TRTEngine,
    artifact_kind,
)
from compress.bench.settings import BenchSettings
from compress.bench.spec import BenchSpec, BenchSpecError, ModelRef
from compress.bench.targets import TARGETS, unavailable_reason
from compress.errors import CompressError

log = logging.getLogger(__name__)

BASELINE, ORT_FP32 = "baseline", "ort_fp32"  # the two references every speedup is a ratio against


@dataclass(frozen=True)
class ONNXFile(ONNXModel):
    """An .onnx file under any name, in a directory that holds its tokenizer and config.json."""

    file: str = "model.onnx"

    @property
    def onnx_path(self) -> Path:
        return self.path / self.file

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob(f"{self.file}*"))


@dataclass(frozen=True)
class EngineFile(TRTEngine):
    """A .engine file under any name, beside engine.json, the tokenizer and config.json."""

    file: str = "model.engine"

    @property
    def engine_path(self) -> Path:
        return self.path / self.file


@dataclass(frozen=True)
class BenchModel:
    name: str  # row label
    artifact: Artifact
    group: str | None = None  # the run directory's name: speedups compare within a run
    role: str | None = None  # BASELINE, ORT_FP32 or None
    data: dict | None = None  # DataSpec (JSON) for accuracy and real lengths
    targets: tuple[str, ...] | None = None  # explicit per-model targets
    task: str = "text-classification"  # the task whose metrics the accuracy cell measures
    metric: str | None = None  # the metric the tables compare (None: the task's default)
    artifact_sha256: str | None = None  # the artifact's files (a run's stage: as its manifest records)
    input_sha256: str | None = None  # an export_onnx stage's input artifact: what it is the export of
    baseline_ref: str | None = None  # the name of the model this row's torch speedup is against
    ort_ref: str | None = None  # the name of the ONNX Runtime fp32 model its ORT speedup is against

    @property
    def kind(self) -> str:
        return artifact_kind_of(self.artifact)

    def job(self) -> dict:
        """What a cell subprocess needs to reopen the artifact."""
        a = self.artifact
        return {"name": self.name, "kind": self.kind, "path": str(a.path), "file": getattr(a, "file", None),
                "group": self.group, "role": self.role, "task": self.task, "metric": self.metric}


@dataclass(frozen=True)
class Cell:
    model: BenchModel
    target: str
    batch_size: int | None  # None on a skipped row: the target cannot run at all
    seq_len: int | None  # None: the eval set's real lengths
    threads: int | None
    accuracy: bool = False  # measure eval accuracy in this cell (once per model and target)
    skipped: str | None = None  # why the target cannot run here
    paired_with: BenchModel | None = None  # settings.paired: the ORT fp32 reference timed in the same process


@dataclass
class Plan:
    cells: list[Cell]
    models: list[BenchModel]
    notes: list[str] = field(default_factory=list)


def artifact_kind_of(artifact: Artifact) -> str:
    for kind, cls in ARTIFACT_KINDS.items():
        if isinstance(artifact, cls):
            return kind
    return artifact_kind(artifact)


def artifact_sha256(artifact: Artifact) -> str:
    """The sha256 a row records for its artifact: the directory's files (stage.json excluded,
    as a run's manifest records it), or only the named .onnx / .engine file and its external data."""
    from compress.files import hash_file
    from compress.resume import tree_sha256

    file = getattr(artifact, "file", None)
    if file is None:
        return tree_sha256(artifact.path)
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(p for p in artifact.path.glob(f"{file}*") if p.is_file()):
        digest.update(f.name.encode() + b"\0")
        hash_file(f, digest)
    return digest.hexdigest()


def reopen_artifact(job: dict) -> Artifact:
    path = Path(job["path"])
    if job["kind"] == "onnx" and job.get("file"):
        return ONNXFile(path, job["file"])
    if job["kind"] == "trt" and job.get("file"):
        return EngineFile(path, job["file"])
    return ARTIFACT_KINDS[job["kind"]](path)


# ---------------------------------------------------------------------------- models


def _run_models(run_dir: Path, data: dict | None) -> list[BenchModel]:
    from pydantic import ValidationError

    from compress.manifest import Manifest

    try:
        manifest = Manifest.read(run_dir)
    except (ValueError, ValidationError) as e:
        raise CompressError(f"{run_dir / 'manifest.json'}: not a compress run manifest ({str(e).splitlines()[0]})") \
            from None
    if data is None and (run_dir / "recipe.resolved.yaml").is_file():
        data = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")).get("data")
        if data is not None:  # a run recorded before data.holdout existed held eval out by a plain shuffle
            data.setdefault("holdout", "shuffled")
    models, seen_torch = [], False
    input_sha = manifest.model_sha256  # what the next stage takes: the run's model, then each artifact
    for entry in manifest.done_stages():
        takes, input_sha = input_sha, entry.artifact_sha256 or input_sha
        if entry.kind == "package":  # holds the previous stage's model: measured once, there
            continue
        artifact = ARTIFACT_KINDS[entry.artifact](run_dir / entry.path)
        role = None
        if entry.artifact == "torch" and not seen_torch:
            role, seen_torch = BASELINE, True  # the fine-tuned, uncompressed model
        models.append(BenchModel(f"{run_dir.name}/{entry.path}", artifact, run_dir.name, role, data,
                                 task=manifest.task, metric=manifest.metric,
                                 artifact_sha256=entry.artifact_sha256 or artifact_sha256(artifact),
                                 input_sha256=takes if entry.kind == "export_onnx" else None))
    if not models:
        raise CompressError(f"run directory {run_dir} has no completed stages in manifest.json")
    return models


def _single_model(path: Path, data: dict | None) -> BenchModel:
    if path.is_file() and path.suffix == ".onnx":
        artifact: Artifact = ONNXFile(path.parent, path.name)
    elif path.is_file() and path.suffix == ".engine":
        if not (path.parent / "engine.json").is_file():
            raise CompressError(f"{path}: no engine.json beside the engine (compress build_engine writes it)")
        artifact = EngineFile(path.parent, path.name)
    elif path.is_dir() and (path / ONNXModel.filename).is_file():
        artifact = ONNXModel(path)
    elif path.is_dir() and (path / TRTEngine.filename).is_file():
        artifact = TRTEngine(path)
    elif path.is_dir():
        from compress.models import check_model_spec

        check_model_spec(str(path))
        artifact = TorchModel(path)
    else:
        raise CompressError(f"{path} is not a run directory, a checkpoint directory, an .onnx or an .engine file")
    if not isinstance(artifact, TorchModel) and not any((artifact.path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise CompressError(f"{path}: no tokenizer files (tokenizer.json or vocab.txt) beside it")
    return BenchModel(path.name if path.is_dir() else f"{path.parent.name}/{path.name}", artifact, data=data,
                      artifact_sha256=artifact_sha256(artifact))


def _reference_model(path: str, data: dict | None, field: str, kind: type, what: str) -> BenchModel:
    """A spec's baseline or ort_baseline: one model of the given artifact kind, or a one-line error."""
    try:
        model = _single_model(Path(path), data)
    except CompressError as e:
        raise BenchSpecError(f"{field}: {e}") from None
    if not isinstance(model.artifact, kind):
        raise BenchSpecError(f"{field}: {path} must be {what}")
    return model


def resolve_models(spec: BenchSpec, where: str = "spec") -> list[BenchModel]:
    data = spec.data.model_dump(mode="json") if spec.data else None
    models: list[BenchModel] = []
    if spec.baseline:
        base = _reference_model(spec.baseline, data, f"{where}: baseline", TorchModel,
                                "a torch checkpoint directory (measured on torch-cpu)")
        models.append(replace(base, group=None, role=BASELINE, task=spec.task))
    for i, ref in enumerate(spec.models):
        try:
            models.extend(replace(m, task=spec.task) if m.group is None else m
                          for m in _expand(ref, data, demote_baseline=bool(spec.baseline)))
        except CompressError as e:
            raise BenchSpecError(f"{where}: models[{i}]: {e}") from None
    ort_name = None
    if spec.ort_baseline:
        ort = _reference_model(spec.ort_baseline, data, f"{where}: ort_baseline", ONNXModel,
                               "an ONNX model (measured on ort-cpu)")
        same = next((m for m in models if m.kind == "onnx" and m.artifact_sha256 == ort.artifact_sha256), None)
        if same is None:
            models.append(replace(ort, task=spec.task))
        ort_name = (same or ort).name
    return assign_references(models, ort_name)


def paired_reference(model: BenchModel, target: str, models: list[BenchModel]) -> BenchModel | None:
    """The model's ONNX Runtime fp32 reference, on an ONNX Runtime target, when it has one
    other than itself (the reference is not paired with itself)."""
    if not target.startswith("ort-") or model.ort_ref is None or model.ort_ref == model.name:
        return None
    return next((m for m in models if m.name == model.ort_ref), None)


def assign_references(models: list[BenchModel], ort_name: str | None) -> list[BenchModel]:
    """Name each model's two references. The torch one: its run's fine-tuned model, or the
    spec's baseline (or the only baseline there is). The ONNX Runtime fp32 one: the spec's
    ort_baseline, else the export of that baseline model itself (an export_onnx stage whose
    input is the baseline's artifact, in any run of the spec), else none: a row is never
    compared against another model's export (a pruned student's, say)."""
    baselines = [m for m in models if m.role == BASELINE]
    exports = [m for m in models if m.input_sha256]
    out, ort_roles = [], set()
    for m in models:
        base = next((b for b in baselines if m.group is not None and b.group == m.group), None)
        if base is None:
            spec_level = [b for b in baselines if b.group is None]
            base = (spec_level or (baselines if len(baselines) == 1 else [None]))[0]
        ort = ort_name
        if ort is None and base is not None and base.artifact_sha256:
            found = sorted((e for e in exports if e.input_sha256 == base.artifact_sha256),
                           key=lambda e: e.group != base.group)
            ort = found[0].name if found else None
        if ort:
            ort_roles.add(ort)
        out.append(replace(m, baseline_ref=base.name if base else None, ort_ref=ort))
    return [replace(m, role=ORT_FP32) if m.name in ort_roles and m.role is None else m for m in out]


def _expand(ref: ModelRef, data: dict | None, demote_baseline: bool) -> list[BenchModel]:
    path = Path(ref.path)
    if not path.exists():
        raise CompressError(f"{path} not found")
    if path.is_dir() and (path / "manifest.json").is_file():
        found = _run_models(path, data)
        if demote_baseline:  # an explicit spec baseline replaces the runs' own
            found = [replace(m, role=None if m.role == BASELINE else m.role) for m in found]
    else:
        found = [_single_model(path, data)]
    targets = tuple(ref.targets) if ref.targets else None
    if ref.name and len(found) == 1:
        found = [replace(found[0], name=ref.name)]
    return [replace(m, targets=targets) for m in found]


# ---------------------------------------------------------------------------- cells


def build_plan(models: list[BenchModel], settings: BenchSettings, where: str = "spec") -> Plan:
    notes: list[str] = []
    cells: list[Cell] = []
    for i, model in enumerate(models):
        kind_cls = type(model.artifact)
        wanted = list(model.targets or settings.targets)
        for t in model.targets or ():
            if not issubclass(kind_cls, TARGETS[t].accepts):
                raise BenchSpecError(
                    f"{where}: models: {model.name} is {model.artifact.description}; target {t} runs "
                    f"{TARGETS[t].accepts.description}")
        runnable = [t for t in wanted if issubclass(kind_cls, TARGETS[t].accepts)]
        # The references are measured even when the spec's targets leave them out.
        if model.role == BASELINE and "torch-cpu" not in runnable:
            runnable.insert(0, "torch-cpu")
        if model.role == ORT_FP32 and "ort-cpu" not in runnable:
            runnable.insert(0, "ort-cpu")
        if not runnable:
            fit = ", ".join(n for n, t in TARGETS.items() if issubclass(kind_cls, t.accepts))
            if model.group is None:
                raise BenchSpecError(f"{where}: models: no target in {settings.targets} runs {model.name} "
                                     f"({model.artifact.description}; it runs on: {fit})")
            notes.append(f"{model.name} ({model.artifact.description}) not measured: no target in {settings.targets} runs it")
            continue
        if settings.shapes.real and not model.data:
            raise BenchSpecError(f"{where}: shapes.real: {model.name} has no eval data (set data:, or real: false)")
        for target in runnable:
            reason = unavailable_reason(target)
            if reason:
                cells.append(Cell(model, target, None, None, None, skipped=reason))
                continue
            first = True
            pair = paired_reference(model, target, models) if settings.paired else None
            for threads in settings.threads:
                for batch, seq in settings.shape_cells:
                    acc = first and settings.accuracy and bool(model.data)
                    cells.append(Cell(model, target, batch, seq, threads, accuracy=acc, paired_with=pair))
                    first = False
    if not cells:
        raise BenchSpecError(f"{where}: nothing to measure ({'; '.join(notes)})")
    return Plan(cells, models, notes)
