"""What lets a long run survive: content fingerprints that decide which stages can be
reused on a rerun, artifact hashes that catch files changed behind our back, and a
lock file so two runs never write the same directory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from compress import __version__
from compress.errors import CompressError
from compress.files import hash_file

log = logging.getLogger(__name__)
RECORD_FILE = "stage.json"
STATE_FILE = "state.json"  # training counters, beside accelerate's files in a checkpoint directory


class ArtifactIntegrityError(CompressError):
    """An artifact's files no longer match the hash recorded when it was written."""


def tree_sha256(path: Path) -> str:
    """One hash over every file under `path` (names and contents), stage.json excluded."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != RECORD_FILE)
    for f in files:
        digest.update(str(f.relative_to(path)).encode() + b"\0")
        hash_file(f, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def input_key(path: Path) -> str:
    """What a model directory contributes to a fingerprint: its content, and for a Hugging Face
    Hub snapshot also the commit its revision resolved to (a moved revision reruns the run)."""
    from compress.hub import snapshot_of

    hub = snapshot_of(path)
    return tree_sha256(path) + (f"@{hub.repo_id}:{hub.commit}" if hub is not None else "")


def stage_fingerprint(recipe, index: int, input_sha256: str, split_record: dict) -> str:
    """Everything a stage's output depends on: the recipe up to and including the stage
    (measurement settings excluded: they change numbers, not artifacts), the input
    artifact's content and the data split."""
    payload = {
        "compress": __version__,
        "task": recipe.task,
        "metric": recipe.metric_name,  # keep_best and the budgets choose by it
        "trust_remote_code": recipe.trust_remote_code,
        "data": recipe.data.model_dump(mode="json"),
        "stages": [s.model_dump(mode="json") for s in recipe.stages[: index + 1]],
        "input_sha256": input_sha256,
        "split": {k: split_record[k] for k in ("seed", "label_names", "train", "eval", "source_sha256")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_key(directory: Path) -> str | None:
    """The resume key a checkpoint directory was written with (None if there is none)."""
    try:
        return json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))["resume_key"]
    except (OSError, ValueError, KeyError):
        return None


def read_stage_record(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify_artifact(stage_dir: Path, record: dict | None = None) -> dict:
    """Refuse an artifact whose files changed since its stage wrote them."""
    record = record or read_stage_record(stage_dir)
    if record is None or "artifact_sha256" not in record:
        raise ArtifactIntegrityError(f"{stage_dir}: no {RECORD_FILE} with an artifact hash: not a completed stage")
    actual = tree_sha256(stage_dir)
    if actual != record["artifact_sha256"]:
        raise ArtifactIntegrityError(
            f"{stage_dir}: artifact files changed since the stage wrote them (sha256 {actual[:12]}… != recorded "
            f"{record['artifact_sha256'][:12]}…); rerun with --from {stage_dir.name} or --force"
        )
    return record


def reusable_record(stage_dir: Path, fingerprint: str) -> dict | None:
    """The stage record if the completed stage in `stage_dir` was made from the same
    inputs and configuration (and its files are intact), else None."""
    record = read_stage_record(stage_dir)
    if record is None or record.get("fingerprint") != fingerprint:
        return None
    return verify_artifact(stage_dir, record)


def resolve_from_stage(stages: list, value: str) -> int:
    """--from accepts a stage number (2, 02), a directory name (02-export_onnx) or a kind."""
    names = [f"{i + 1:02d}-{s.kind}" for i, s in enumerate(stages)]
    for i, (name, stage) in enumerate(zip(names, stages)):
        if value in (name, str(i + 1), f"{i + 1:02d}", stage.kind):
            return i
    raise CompressError(f"--from {value!r}: no such stage (stages: {', '.join(names)})")


# ---------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory: `.lock` holds the owner's PID and host. A
    lock whose process is gone (killed run) is stale and taken over with a warning."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise CompressError(f"{self.path}: could not take the run lock")

    def _check_existing(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = None, None, None
        if owner is not None and pid != os.getpid():
            if host != socket.gethostname():
                raise CompressError(
                    f"{self.path.parent} is locked by a run on host {host} (pid {pid}); "
                    f"if that run is gone, delete {self.path}"
                )
            if _pid_alive(pid):
                raise CompressError(
                    f"{self.path.parent} is in use by another compress run (pid {pid}, started "
                    f"{owner.get('started')}); wait for it to finish or use another --out"
                )
        log.warning("taking over a stale lock on %s (its run is no longer running)", self.path.parent)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
