"""README tables are generated from committed raw files (benchmarks/readme_tables.py): each
generated block equals what its raw file renders now, and an edited number is caught."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402

READMES = readme_tables.readmes()


@pytest.mark.parametrize("path", READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_generated_tables_match_their_raw_files(path):
    _, differs = readme_tables.regenerate(path.read_text(encoding="utf-8"))
    assert not differs, f"{path}: regenerate with python benchmarks/readme_tables.py --write ({differs})"


def test_the_readme_tables_are_generated():
    commands = [m.group("command") for m in readme_tables.BLOCK.finditer((ROOT / "README.md").read_text())]
    assert any(c.startswith("ledger benchmarks/results/quickstart/") for c in commands)
    assert "bench benchmarks/results/headline/combined/results.jsonl" in commands
    assert any(c.startswith("tasks ") for c in commands)


def test_an_edited_number_is_caught():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(readme_tables.BLOCK.finditer(text))
    body = block.group("body")
    digit = next(i for i, ch in enumerate(body) if ch.isdigit() and body[i - 1] in " .")
    edited = body[:digit] + str((int(body[digit]) + 1) % 10) + body[digit + 1:]
    text = text[:block.start("body")] + edited + text[block.end("body"):]
    _, differs = readme_tables.regenerate(text)
    assert differs == [block.group("command")]
