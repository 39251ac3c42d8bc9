"""A user's YAML file (a recipe, a bench spec) read, and what pydantic finds wrong with it
said in one line. The caller passes the names it knows (fields, stage kinds), so this
module imports neither the recipe nor the stages."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from compress.errors import CompressError


def read_yaml_file(path: Path, what: str, error: type[CompressError]) -> object:
    """The parsed document of a YAML file (safe_load: no tags run), or `error` with one
    line naming the file and, for a syntax error, the line and column."""
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}: invalid YAML: {where}{problem}") from None


def describe_validation_error(err: ValidationError, known_fields: Sequence[str],
                              stage_kinds: Sequence[str] = ()) -> str:
    """The first pydantic error as 'field.path: what is wrong', plus a count of the rest.
    known_fields: names for the 'did you mean' hint; stage_kinds: the tags of a
    discriminated stage list (a recipe's), named when a stage's kind is wrong."""
    errors = err.errors(include_url=False)
    # a misspelled field name explains the 'required field is missing' beside it: name it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _format_loc(first["loc"], stage_kinds)
    kind, msg, value = first["type"], first["msg"], first.get("input")
    if kind == "union_tag_invalid":
        loc = f"{loc}.kind"
        msg = f"unknown stage kind {first['ctx']['tag']!r} (expected one of: {', '.join(stage_kinds)})"
    elif kind == "union_tag_not_found":
        msg = f"stage has no 'kind' (expected one of: {', '.join(stage_kinds)})"
    elif kind == "extra_forbidden":
        name = str(first["loc"][-1])
        close = difflib.get_close_matches(name, [f for f in known_fields if f != name], n=1)
        msg = "unknown field" + (f" (did you mean '{close[0]}'?)" if close else "")  # a field of another block
    elif kind == "missing":
        msg = "required field is missing"
    elif kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    elif value is not None and not isinstance(value, (dict, list)):
        msg = f"{msg} (got {value!r})"
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _format_loc(loc: tuple, stage_kinds: Sequence[str]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in stage_kinds:
            continue  # the discriminator tag pydantic inserts after a stage index
        else:
            out += f".{part}" if out else str(part)
    return out
