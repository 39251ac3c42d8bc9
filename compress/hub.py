"""Models named by a Hugging Face Hub id ('bert-base-uncased', 'owner/name'), resolved to a
snapshot directory through huggingface_hub's own cache (snapshot_download): downloaded
where the network allows, read from the cache when offline (HF_HUB_OFFLINE=1 or
`compress run --offline`).

How a recipe's `model:` (or a distill `teacher:`) is read:
1. 'builtin:<name>': a packaged model;
2. an existing directory (absolute, or relative to the recipe): that directory;
3. otherwise a value shaped like a Hub id ('name' or 'owner/name': letters, digits, '-', '_',
   '.', no leading '.', '/' or '~'): that Hub repository, at `model_revision` (default main);
4. anything else: a local directory that does not exist.
So 'models/bert' is a directory when the recipe's folder holds one, and the Hub repository
'models/bert' otherwise; write './models/bert' to mean a directory only."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from compress.errors import CompressError

log = logging.getLogger(__name__)

# huggingface_hub's repo id grammar (validate_repo_id), checked without importing it
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# what a checkpoint needs: config, weights, tokenizer files (not TF / Flax / ONNX copies)
_CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_TORCH_BIN = ["pytorch_model*.bin"]
# what a dataset repository's splits are read from by `datasets` (not its scripts or media)
_DATASET_FILES = ["README.md", "*.parquet", "*.arrow", "*.csv", "*.tsv", "*.json", "*.jsonl", "*.txt"]


def looks_like_hub_id(value: str) -> bool:
    """A value a recipe may mean as a Hub id: 'name' or 'owner/name' (not a path such as
    './x', '../x', '/x', '~/x' or 'a/b/c')."""
    return bool(_HUB_ID.match(value)) and "--" not in value and ".." not in value and not value.endswith(".git")


def offline() -> bool:
    """HF_HUB_OFFLINE is set (by the user, or by `compress run --offline`)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or flag in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSnapshot:
    repo_id: str
    revision: str | None  # as asked (None: main)
    commit: str  # the commit the revision resolved to
    path: Path  # the snapshot directory in the Hugging Face cache


_RESOLVED: dict[Path, HubSnapshot] = {}


def resolve_hub_model(repo_id: str, revision: str | None = None) -> HubSnapshot:
    """The snapshot directory of a Hub model at `revision`: from the Hugging Face cache,
    downloading it first unless offline. CompressError (one line, naming the id) when it
    cannot be had."""
    return _resolve(repo_id, revision, offline(), "model", None)


def resolve_hub_dataset(repo_id: str, revision: str | None = None,
                        files: tuple[str, ...] | None = None) -> HubSnapshot:
    """The snapshot directory of a Hub dataset repository at `revision`, as resolve_hub_model
    does it; `files` (glob patterns) narrows what is downloaded (None: every data file)."""
    return _resolve(repo_id, revision, offline(), "dataset", files)


@lru_cache(maxsize=None)
def _resolve(repo_id: str, revision: str | None, local_only: bool, repo_type: str,
             files: tuple[str, ...] | None) -> HubSnapshot:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision}" if revision else repo_id
    what = f"Hugging Face {repo_type}"
    patterns = list(files) if files else (_CHECKPOINT_FILES if repo_type == "model" else _DATASET_FILES)
    try:
        if not local_only:
            log.info("Hugging Face Hub: fetching %s %s (or using the cache)", repo_type, at)
        path = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=local_only,
                                      allow_patterns=patterns))
        if repo_type == "model" and not local_only and not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_TORCH_BIN))  # older weights
    except LocalEntryNotFoundError:
        where = "offline (HF_HUB_OFFLINE or --offline)" if local_only else "and the Hub cannot be reached"
        raise CompressError(f"{what} {at!r} is not in the local cache ({_cache_dir()}) {where}: "
                            "download it where the network allows (or give a local path)") from None
    except RevisionNotFoundError:
        raise CompressError(f"{what} {repo_id!r} has no revision {revision!r}") from None
    except GatedRepoError:
        raise CompressError(f"{what} {at!r} is gated: accept its terms and log in "
                            "(hf auth login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CompressError(f"{what} {at!r} not found on the Hub (or private: log in with "
                            "hf auth login or HF_TOKEN)") from None
    except HFValidationError as e:
        raise CompressError(f"{at!r} is not a valid {what} id: {str(e).splitlines()[0]}") from None
    except (HfHubHTTPError, OSError) as e:
        raise CompressError(f"{what} {at!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    snapshot = HubSnapshot(repo_id, revision, path.name, path)  # the cache names a snapshot by its commit
    _RESOLVED[path] = snapshot
    return snapshot


def snapshot_of(path: Path) -> HubSnapshot | None:
    """The Hub snapshot a directory was resolved as in this process (None: a plain directory)."""
    return _RESOLVED.get(Path(path))


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def forget_resolved() -> None:
    """Drop what this process resolved (tests that swap the Hugging Face cache)."""
    _resolve.cache_clear()
    _RESOLVED.clear()
