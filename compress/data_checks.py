"""The data contract: what a split must satisfy before anything trains on it, checked once
(by data.load_splits, which `validate`, `run` and `bench` all go through), and the one-line
summary that `validate` and `run --dry-run` print.

Thresholds (each refusal names the file, the row or column, and what to do):
- MIN_EVAL_EXAMPLES: an eval split smaller than this moves the metric in steps of more
  than 10 points per example: no number measured on it means anything.
- MIN_TRAIN_PER_LABEL: a label seen once in train cannot be learned, only memorised (and a
  random split may hold its one row out).
- MAX_LABELS_PER_TRAIN_ROW: more distinct labels than half the train rows is what a wrong
  label_column gives (a text or id column: every row its own label)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from compress.data_formats import at
from compress.errors import DataError

MIN_EVAL_EXAMPLES = 10
MIN_TRAIN_PER_LABEL = 2
MAX_LABELS_PER_TRAIN_ROW = 0.5


def check_eval_size(n_eval: int, eval_origin: str) -> None:
    if n_eval < MIN_EVAL_EXAMPLES:
        raise DataError(f"{eval_origin}: {n_eval} eval examples: fewer than {MIN_EVAL_EXAMPLES} make the metric "
                        "meaningless (give more rows, raise data.eval_fraction or data.max_eval_samples)")


def check_label_splits(train_labels: list[int], train_rows: list[int], eval_labels: list[int], eval_rows: list[int],
                       n_eval: int, names: list[str], train_origin: str, eval_origin: str, what: str) -> None:
    """Raise DataError (one line) when the split would train or measure garbage. The labels are
    ids into names, one per occurrence (a sentence label, or an entity type per entity), with
    the source line of each; `what` names where they come from (e.g. "column 'label'")."""
    check_eval_size(n_eval, eval_origin)
    counts = Counter(train_labels)
    n_train = len(set(train_rows))
    if len(counts) > MAX_LABELS_PER_TRAIN_ROW * n_train:
        raise DataError(f"{train_origin}: {what} has {len(counts)} distinct labels in "
                        f"{n_train} train rows: that is no label set (is it the right column?)")
    for label_id, count in sorted(counts.items()):
        if count < MIN_TRAIN_PER_LABEL:
            row = train_rows[train_labels.index(label_id)]
            raise DataError(f"{at(train_origin, row)}: label {names[label_id]!r} occurs {count} time in the train "
                            f"split; every label needs at least {MIN_TRAIN_PER_LABEL} train examples")
    for label_id, row in zip(eval_labels, eval_rows):
        if label_id not in counts:
            raise DataError(f"{at(eval_origin, row)}: label {names[label_id]!r} never occurs in the train split")


def count_truncated(model_dir: Path, dataset, max_length: int) -> int | None:
    """Examples longer than max_length tokens (they are cut when encoded), counted with the
    model's tokenizer.json through the light `tokenizers` library; None without one."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    inputs = list(zip(dataset.texts, dataset.pairs)) if dataset.pairs is not None else list(dataset.texts)
    pretokenized = getattr(dataset, "pretokenized", False)  # word lists (token classification)
    return sum(len(e.ids) > max_length for e in tokenizer.encode_batch(inputs, is_pretokenized=pretokenized))


def summary_line(splits, spec, model_dir: Path | None = None) -> str:
    """'train N / eval M examples, labels [...], seed S, max_length L' plus how many examples
    the model's tokenizer will truncate."""
    labels = f"labels {splits.label_names}, " if splits.label_names is not None else ""
    line = f"train {len(splits.train)} / eval {len(splits.eval)} examples, {labels}seed {spec.seed}, max_length {spec.max_length}"
    notes = getattr(splits.train, "notes", []) + getattr(splits.eval, "notes", [])
    for note in dict.fromkeys(notes):  # a held-out eval split shares its source's notes
        line += f", {note}"
    if model_dir is not None:
        cut = [count_truncated(model_dir, ds, spec.max_length) for ds in (splits.train, splits.eval)]
        if None not in cut:
            # a long QA context is not cut but split into overlapping windows
            what = "split into windows at" if getattr(splits.train, "windowed", False) else "truncated to"
            line += f", {what} max_length: {cut[0]} train / {cut[1]} eval"
    return line
