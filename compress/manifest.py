"""manifest.json as a typed object: the run (recipe, model, task, environment, data
split, input measurement) and one entry per stage. Written by the run context, read by
the report, the benchmark planner and the package stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

MANIFEST_FILE = "manifest.json"
StageStatus = Literal["running", "completed", "reused", "skipped", "failed"]


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str  # the stage directory's name, NN-kind
    kind: str
    status: StageStatus
    config: dict | None = None
    path: str | None = None  # relative to the run directory; set once the stage is done
    wall_seconds: float | None = None
    artifact: str | None = None  # the artifact kind (torch, onnx, trt)
    metrics: dict | None = None  # the task's metrics on the eval split (e.g. {"accuracy": 0.81})
    artifact_sha256: str | None = None
    reason: str | None = None  # why a stage was skipped
    error: str | None = None  # why a stage failed

    @property
    def done(self) -> bool:
        """Completed now or earlier (reused): its directory holds a complete artifact."""
        return self.status in ("completed", "reused") and self.path is not None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    status: Literal["running", "completed", "failed"]
    started: str
    finished: str | None = None
    recipe: str | None = None
    model: str
    task: str
    metric: str | None = None  # the metric the ledger compares (None in older runs: the task's default)
    environment: dict = {}
    model_sha256: str | None = None
    model_commit: str | None = None  # the Hub commit a Hub id model's revision resolved to
    data: dict | None = None  # the split record
    input: dict | None = None  # the input model's measurement, when it already does the task
    stages: list[StageEntry] = []
    final_artifact: dict | None = None
    selection: dict | None = None  # the select block's record: candidates, Pareto front, the chosen stage
    error: str | None = None

    def done_stages(self) -> list[StageEntry]:
        return [e for e in self.stages if e.done]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def read(cls, run_dir: Path) -> Manifest:
        return cls.model_validate(json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8")))
