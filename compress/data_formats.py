"""Row readers for the task-specific file formats (CSV, TSV and JSONL are read in data.py):
CoNLL-style tagging files and SQuAD v1.1 JSON. Each returns (line, row) pairs whose rows
use the task's default column names; the rows' values are checked by the task."""

from __future__ import annotations

import json
from pathlib import Path

from compress.errors import DataError


class RowOrigin(str):
    """Where rows came from when they are records, not text lines (a parquet or arrow file, a
    saved or Hub `datasets` split): messages number them as rows from 1."""


def at(origin: str, n: int) -> str:
    """'<origin>: line <n>' for a text file, '<origin>: row <n>' for a RowOrigin."""
    return f"{origin}: {'row' if isinstance(origin, RowOrigin) else 'line'} {n}"


def conll_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """CoNLL-style tagging: one `token<TAB>tag` (or `token tag`) line per word, a blank line
    between sentences, `-DOCSTART-` lines skipped; each row is numbered by its first line."""
    rows, tokens, tags, lines = [], [], [], []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip() or fields[0] == "-DOCSTART-":
            if tokens:
                rows.append((lines[0], {"tokens": tokens, "tags": tags, "word_lines": lines}))
            tokens, tags, lines = [], [], []
            continue
        if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
            raise DataError(f"{path}: line {n}: expected 'token<TAB>tag', got {line[:60]!r}")
        tokens.append(fields[0].strip())
        tags.append(fields[-1].strip())
        lines.append(n)
    if tokens:
        rows.append((lines[0], {"tokens": tokens, "tags": tags, "word_lines": lines}))
    return rows



def _fail(path, where: str, what: str) -> DataError:
    return DataError(f"{path}: {where}: {what}")


def _list_at(container, key: str, path, where: str) -> list:
    if not isinstance(container, dict):
        raise _fail(path, where, f"expected a JSON object with {key!r}, got {type(container).__name__}")
    value = container.get(key)
    if not isinstance(value, list):
        what = f"no {key!r} list" if value is None else f"{key!r} is {type(value).__name__}, not a list"
        raise _fail(path, where, what)
    return value


def squad_rows(path: Path) -> list[tuple[int, dict]]:
    """(ordinal, row) pairs from a SQuAD v1.1 JSON file, one per question, ordinals counting
    from 1 (what error messages call the row's line: a SQuAD file is often one line).
    row: {"id", "question", "context", "answers": [{"text", "answer_start"}]}; the rows'
    values are checked by dataset_from_rows, the file's structure here."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    rows = []
    for a, article in enumerate(_list_at(doc, "data", path, "top level (not a SQuAD file?)")):
        for p, paragraph in enumerate(_list_at(article, "paragraphs", path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            qas = _list_at(paragraph, "qas", path, where)
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    raise _fail(path, f"{where}.qas[{q}]", f"expected a JSON object, got {type(qa).__name__}")
                rows.append((len(rows) + 1, {"id": qa.get("id"), "question": qa.get("question"), "context": context,
                                             "answers": qa.get("answers")}))
    if not rows:
        raise DataError(f"{path}: no questions (data[].paragraphs[].qas[] is empty)")
    return rows
