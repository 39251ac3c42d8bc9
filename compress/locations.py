"""Where a model or a data set comes from, as a recipe or a bench spec writes it: a
built-in packaged one ('builtin:<name>'), a path relative to the file naming it, or a Hugging
Face Hub model or dataset id (compress.hub)."""

from __future__ import annotations

from pathlib import Path

from compress.errors import CompressError

BUILTIN_PREFIX = "builtin:"


def builtin_name(location: str) -> str | None:
    """The name in 'builtin:<name>', or None for a path."""
    return location[len(BUILTIN_PREFIX) :] if location.startswith(BUILTIN_PREFIX) else None


def check_location(value: str | None) -> str | None:
    """A pydantic field validator: reject a blank location or one with a NUL byte."""
    if value is not None and (not value.strip() or "\x00" in value):
        raise ValueError(f"must be a file path or a '{BUILTIN_PREFIX}' name (got an empty string or a NUL byte)")
    return value


def resolve_location(value: str | None, base: Path, where: str, error: type[CompressError]) -> str | None:
    """None and built-in names as they are; a path made absolute against `base` (the
    directory of the file naming it). `error` names `where` when the path cannot resolve."""
    if value is None or builtin_name(value) is not None:
        return value
    try:
        return str((base / Path(value).expanduser()).resolve())
    except (OSError, ValueError, RuntimeError) as e:  # e.g. '~nobody' with no such user
        raise error(f"{where}: cannot resolve path {value!r}: {e}") from None


def resolve_model_location(value: str, base: Path, where: str, error: type[CompressError]) -> str:
    """A model: a 'builtin:' name or a Hub id ('owner/name' with nothing of that name under
    `base`) as it is; otherwise a path made absolute against `base`."""
    return value if _is_hub_id_here(value, base) else resolve_location(value, base, where, error)


# a file suffix that makes a data source a file, never a Hub dataset id ('train.csv')
DATA_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".conll", ".parquet", ".arrow")


def resolve_data_location(value: str | None, base: Path, where: str, error: type[CompressError]) -> str | None:
    """A data source: a 'builtin:' name or a Hub dataset id ('owner/name', no data-file suffix,
    nothing of that name under `base`) as it is; otherwise a path made absolute against `base`."""
    if value is not None and names_hub_dataset(value, base):
        return value
    return resolve_location(value, base, where, error)


def names_hub_dataset(value: str, base: Path = Path()) -> bool:
    """A data source that is a Hub dataset id: shaped like one, no data-file suffix, nothing of
    that name under `base` (a recipe's sources are absolute paths by the time they are read)."""
    return not value.lower().endswith(DATA_FILE_SUFFIXES) and _is_hub_id_here(value, base)


def _is_hub_id_here(value: str, base: Path) -> bool:
    from compress.hub import looks_like_hub_id

    if builtin_name(value) is not None or not looks_like_hub_id(value):
        return False
    try:
        return not (base / value).exists()
    except OSError:
        return True
