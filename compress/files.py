"""Writing and hashing files safely: atomic JSON writes, atomic directory swaps, sha256.

Standard library only: the light deploy-time runtime (compress.runtime) imports it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an older one is moved aside first, so at
    every instant `dst` is either the old complete output, absent, or the new one."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def hash_file(path: Path | str, digest=None):
    """`digest` (default: a new sha256) updated with the file's bytes, read in 1 MiB
    chunks; a caller hashing many files into one digest passes its own."""
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_sha256(path: Path | str) -> str:
    return hash_file(path).hexdigest()
