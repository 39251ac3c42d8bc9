"""Run and stage directories, the per-stage record (stage.json) and manifest.json.

A stage writes into a hidden `.NN-kind.partial/` directory that is renamed into
place only after the stage and its measurements finished, so a directory named
`NN-kind/` is always complete. manifest.json says which stages ran and how."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from compress.artifacts import Artifact, artifact_kind
from compress.evaluate import MeasureSpec
from compress.files import replace_dir, write_json
from compress.recipe import Recipe

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"


def _clear_partial(partial: Path, fingerprint: str) -> None:
    """Empty a stage's .partial directory, keeping a training checkpoint written for the
    same fingerprint (so a rerun after a kill resumes mid-stage instead of from step 0)."""
    from compress.training import checkpoint_key

    checkpoint = partial / CHECKPOINT_DIR
    if not partial.exists():
        return
    if checkpoint_key(checkpoint) != fingerprint:
        shutil.rmtree(partial, ignore_errors=True)
        return
    log.info("keeping the training checkpoint in %s for resuming", checkpoint)
    for p in partial.iterdir():
        if p.name != CHECKPOINT_DIR:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("compress", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "nncf"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@dataclass
class StageContext:
    run: RunContext
    index: int
    kind: str
    artifact_dir: Path  # where the stage writes its artifact (the .partial directory)
    info: dict = field(default_factory=dict)
    fingerprint: str | None = None  # the stage's input fingerprint: a training checkpoint resumes only on a match

    @property
    def checkpoint_dir(self) -> Path:
        """Mid-stage training state; lives in the .partial directory, never in the finished artifact."""
        return self.artifact_dir / CHECKPOINT_DIR

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def measure(self) -> MeasureSpec:
        return self.run.recipe.measure

    @property
    def splits(self):
        return self.run.splits

    def encoded_eval(self, artifact: Artifact) -> list[dict]:
        return self.run.encoded_eval(artifact)

    def input_measurement(self, artifact: Artifact) -> dict:
        """Accuracy, parameters and batch-1 latency already measured for this stage's input
        (the previous stage's stage.json, or the input model's baseline), for before/after
        comparisons; measured now when nothing was recorded."""
        from compress.evaluate import measure_artifact
        from compress.models import resolve_model_dir
        from compress.resume import read_stage_record

        record = read_stage_record(artifact.path)
        if record is None and "input" in self.run.manifest and artifact.path == resolve_model_dir(self.recipe.model):
            record = self.run.manifest["input"]
        if record is None or "accuracy" not in record:
            record = measure_artifact(artifact, self.run)
        return {"accuracy": record.get("accuracy"), "parameters": record.get("parameters"),
                "latency_p50_ms": (record.get("latency") or {}).get("p50_ms"),
                "structure": record.get("structure")}

    def record(self, **values: Any) -> None:
        """Add entries to this stage's stage.json."""
        self.info.update(values)


class RunContext:
    def __init__(self, recipe: Recipe, run_dir: Path, recipe_path: Path | None = None):
        self.recipe = recipe
        self.run_dir = run_dir
        self.recipe_path = recipe_path
        self.manifest: dict[str, Any] = {}
        self._encoded: dict[Path, list[dict]] = {}

    @classmethod
    def create(cls, recipe: Recipe, run_dir: Path, recipe_path: Path | None = None) -> RunContext:
        run_dir.mkdir(parents=True, exist_ok=True)
        ctx = cls(recipe, run_dir, recipe_path)
        resolved = recipe.model_dump(mode="json")
        (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        ctx.manifest = {
            "name": recipe.name,
            "status": "running",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "recipe": str(recipe_path) if recipe_path else None,
            "model": recipe.model,
            "task": recipe.task,
            "environment": environment(),
            "stages": [],
        }
        ctx.write_manifest()
        return ctx

    @cached_property
    def splits(self):
        from compress.data import load_splits

        splits = load_splits(self.recipe.data)
        self.manifest["data"] = splits.record
        write_json(self.run_dir / "data_split.json", {
            **splits.record, "train_rows": splits.train.rows, "eval_rows": splits.eval.rows,
        })
        self.write_manifest()
        return splits

    def encoded_eval(self, artifact: Artifact) -> list[dict]:
        """The eval split tokenized with the artifact's own tokenizer (cached per tokenizer files)."""
        from compress.data import encode
        from compress.models import load_tokenizer

        key = artifact.path / "tokenizer.json"
        key = key if key.exists() else artifact.path / "vocab.txt"
        sig = (key.read_bytes() if key.exists() else str(artifact.path).encode()).__hash__()
        if sig not in self._encoded:
            tokenizer = load_tokenizer(artifact.path, self.recipe.trust_remote_code)
            self._encoded[sig] = encode(tokenizer, self.splits.eval, self.recipe.data.max_length)
        return self._encoded[sig]

    def write_manifest(self) -> None:
        write_json(self.run_dir / "manifest.json", self.manifest)

    def stage_dir_name(self, index: int, kind: str) -> str:
        return f"{index + 1:02d}-{kind}"

    @contextmanager
    def stage(self, index: int, kind: str, config: dict, fingerprint: str):
        from compress.resume import tree_sha256

        name = self.stage_dir_name(index, kind)
        final, partial = self.run_dir / name, self.run_dir / f".{name}.partial"
        _clear_partial(partial, fingerprint)  # left by a killed run
        partial.mkdir(parents=True, exist_ok=True)
        sctx = StageContext(self, index, kind, partial, fingerprint=fingerprint)
        entry = {"name": name, "kind": kind, "status": "running", "config": config}
        self.manifest["stages"].append(entry)
        self.write_manifest()
        started = time.perf_counter()
        try:
            yield sctx
            shutil.rmtree(sctx.checkpoint_dir, ignore_errors=True)
            sctx.record(fingerprint=fingerprint, artifact_sha256=tree_sha256(partial))
        except BaseException as e:
            entry.update(status="failed", error=str(e) or type(e).__name__,
                         wall_seconds=round(time.perf_counter() - started, 2))
            self.finish("failed", error=f"stage {name}: {e or type(e).__name__}")
            _clear_partial(partial, fingerprint)  # a training checkpoint survives for the rerun
            raise
        record = {"name": name, "kind": kind, "config": config, **sctx.info,
                  "wall_seconds": round(time.perf_counter() - started, 2)}
        write_json(partial / "stage.json", record)
        replace_dir(partial, final)
        entry.update(status="completed", path=name, wall_seconds=record["wall_seconds"],
                     artifact=record.get("artifact"), accuracy=record.get("accuracy"),
                     artifact_sha256=record["artifact_sha256"])
        self.write_manifest()

    def reuse_stage(self, index: int, kind: str, record: dict) -> None:
        """Record a stage whose earlier output is reused as is (same fingerprint, intact files)."""
        name = self.stage_dir_name(index, kind)
        self.manifest["stages"].append({
            "name": name, "kind": kind, "status": "reused", "config": record.get("config"), "path": name,
            "wall_seconds": record.get("wall_seconds"), "artifact": record.get("artifact"),
            "accuracy": record.get("accuracy"), "artifact_sha256": record["artifact_sha256"],
        })
        self.write_manifest()

    def skip_stage(self, index: int, kind: str, reason: str) -> None:
        name = self.stage_dir_name(index, kind)
        self.manifest["stages"].append({"name": name, "kind": kind, "status": "skipped", "reason": reason})
        self.write_manifest()

    def record_input(self, record: dict) -> None:
        self.manifest["input"] = record
        self.write_manifest()

    def finish(self, status: str, final: Artifact | None = None, error: str | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if final is not None:
            inside = final.path.is_relative_to(self.run_dir)  # not when every stage was skipped
            path = final.path.relative_to(self.run_dir) if inside else final.path
            self.manifest["final_artifact"] = {"kind": artifact_kind(final), "path": str(path)}
        if error:
            self.manifest["error"] = error
        self.write_manifest()
