"""Data sets read through Hugging Face `datasets`: a directory written by `save_to_disk`, a
parquet or arrow file, and a Hub dataset id ('name' or 'owner/name', with data.config and
data.revision) resolved through huggingface_hub's cache under the same online/offline rule as
models (compress.hub). Rows come out numbered from 1 (messages say 'row N'), with ClassLabel
values as their names and the data set's own label names in id order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.data_formats import RowOrigin
from compress.errors import CompressError, DataError

TABLE_FORMATS = ("parquet", "arrow")


@dataclass(frozen=True)
class Table:
    rows: list[tuple[int, dict]]  # (row number from 1, row) pairs
    label_names: dict[str, list[str]]  # column -> names of a ClassLabel column (or of a list of them)
    origin: RowOrigin
    pin: dict  # what pins the content beyond the source's name (Hub commit, datasets fingerprint)


def is_saved_dataset(path: Path) -> bool:
    """A directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading parquet, arrow, saved or Hub data sets needs the `datasets` package: "
                        "pip install 'compress[train]'") from None
    datasets.disable_progress_bars()  # compress shows its own progress
    return datasets


def open_table(source: str, split: str, fmt: str | None, config: str | None, revision: str | None,
               is_hub: bool):
    """(Dataset, origin, pin) of `split` of a saved directory or Hub dataset, or of a
    parquet/arrow file (one split: `split` does not apply). Memory-mapped: no rows read yet."""
    datasets = _datasets()
    pin: dict = {}
    if is_hub:
        from compress.hub import resolve_hub_dataset

        snapshot = resolve_hub_dataset(source, revision, _config_files(source, revision, config))
        pin = {"hub_commit": snapshot.commit, **({"config": config} if config else {})}
        origin = RowOrigin(f"{source}{'/' + config if config else ''}[{split}]")
        try:
            ds = datasets.load_dataset(str(snapshot.path), name=config, split=split)
        except ValueError as e:  # an unknown config or split: datasets names the ones there are
            raise DataError(f"{origin}: {str(e).splitlines()[0]}") from None
    else:
        path = Path(source)
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path}: no split {split!r} (splits: {', '.join(loaded)})")
                ds, origin = loaded[split], RowOrigin(f"{path}[{split}]")
            else:
                ds, origin = loaded, RowOrigin(str(path))
            pin = {"fingerprint": ds._fingerprint}  # datasets' content hash, kept in state.json
        else:
            ds, origin = _read_file(datasets, path, fmt), RowOrigin(str(path))
    return ds, origin, pin


def read_table(source: str, split: str, fmt: str | None, config: str | None, revision: str | None,
               is_hub: bool) -> Table:
    """The rows of open_table's split, ClassLabel values as their names."""
    ds, origin, pin = open_table(source, split, fmt, config, revision, is_hub)
    names = {col: n for col, feature in ds.features.items() if (n := _class_names(feature))}
    rows = [(i, _with_names(row, names)) for i, row in enumerate(ds, start=1)]
    return Table(rows, names, origin, pin)


def _read_file(datasets, path: Path, fmt: str):
    """A parquet or arrow file as a Dataset, its features (ClassLabel names) from the schema
    metadata `datasets` writes; read in place, nothing written to a cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        else:  # the arrow stream format (what datasets writes), else the arrow file format
            try:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable {fmt} file: {str(e).splitlines()[0]}") from None
    return datasets.Dataset(table)


def _class_names(feature) -> list[str] | None:
    """The names of a ClassLabel feature, or of the ClassLabel inside a list feature (NER tags)."""
    from datasets import ClassLabel

    inner = getattr(feature, "feature", None)  # Sequence / List
    for f in (feature, inner):
        if isinstance(f, ClassLabel):
            return list(f.names)
    return None


def _with_names(row: dict, names: dict[str, list[str]]) -> dict:
    for col, labels in names.items():
        value = row[col]
        if isinstance(value, list):
            row[col] = [labels[v] if isinstance(v, int) and 0 <= v < len(labels) else v for v in value]
        elif isinstance(value, int) and 0 <= value < len(labels):
            row[col] = labels[value]
    return row


def _config_files(repo_id: str, revision: str | None, config: str | None) -> tuple[str, ...] | None:
    """The files of one config, from the data_files its README's `configs:` metadata lists (so
    a many-config repository is not downloaded whole); None: every data file."""
    if config is None:
        return None
    from compress.hub import resolve_hub_dataset

    try:
        card = resolve_hub_dataset(repo_id, revision, ("README.md",)).path / "README.md"
    except CompressError:
        return None  # the full download names what is wrong
    if not card.is_file():
        return None
    import yaml

    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    for entry in meta.get("configs") or []:
        if isinstance(entry, dict) and entry.get("config_name") == config:
            files = entry.get("data_files")
            items = files if isinstance(files, list) else [files]
            paths = [p for item in items for p in _paths(item)]
            return ("README.md", *paths) if paths else None
    return None


def _paths(item) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        path = item.get("path")
        return [path] if isinstance(path, str) else [p for p in path or [] if isinstance(p, str)]
    return []
