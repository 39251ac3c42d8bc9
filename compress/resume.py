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

from compress.errors import CompressError
from compress.files import hash_file
from compress.version import __version__

log = logging.getLogger(__name__)
RECORD_FILE = "stage.json"
STATE_FILE = "state.json"
# what identifies a data split (its record's keys): the fingerprint's and every rank's
SPLIT_IDENTITY = ("seed", "label_names", "train", "eval", "source_sha256")  # training counters, beside accelerate's files in a checkpoint directory


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
        "split": {k: split_record[k] for k in SPLIT_IDENTITY},
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


class RunLock:
    """An exclusive lock on a run directory, held by the job's rank 0 for the whole run.

    The lock is the operating system's (filelock: flock on `.lock`), so it is released when
    its process dies, even by kill -9: a killed run's lock is never mistaken for a live one,
    and no file content decides who holds it. On a shared filesystem with working locks
    (local disks, NFS v4, Lustre, GPFS) it excludes runs on other hosts too. `.lock.json`
    names the holder (host, pid, start) so a refused run can say who has the directory."""

    def __init__(self, run_dir: Path, world_size: int = 1):
        self.path = run_dir / ".lock"
        self.owner_path = run_dir / ".lock.json"
        self.world_size = world_size
        self._lock = None

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise CompressError(f"{self.path.parent} is in use by another compress run ({self._holder()}); "
                                "wait for it to finish or use another --out") from None
        self._lock = lock
        previous = self._read_owner()
        if previous is not None:  # it held the lock and is gone without releasing it: killed
            log.warning("taking over %s from a run that is no longer running (pid %s on %s, started %s)",
                        self.path.parent, previous.get("pid"), previous.get("host"), previous.get("started"))
        from compress.files import write_json

        write_json(self.owner_path, {"pid": os.getpid(), "host": socket.gethostname(), "processes": self.world_size,
                                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return self

    def _read_owner(self) -> dict | None:
        try:
            owner = json.loads(self.owner_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _holder(self) -> str:
        owner = self._read_owner()
        if owner is None:  # it has the lock but has not written its name yet
            return "holder not yet recorded"
        return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"

    def __exit__(self, *exc) -> None:
        self.owner_path.unlink(missing_ok=True)  # before releasing: the next holder's record is never removed
        self._lock.release()
