"""The data contract (compress/data_checks.py): data that would train or measure garbage is
refused with one line naming the file, the row or column, before anything is written;
odd but valid files keep working; `validate` checks the data exactly as `run` does."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from compress.cli import app
from compress.data import DataSpec, load_splits
from compress.data_checks import MIN_EVAL_EXAMPLES, summary_line
from compress.errors import CompressError, DataError, RecipeError
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from tests.conftest import make_sentences, tiny_recipe_text, write_csv
from tests.helpers import recipe_error


def refused(path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(train=str(path), **kw))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# ---------------------------------------------------------------------------- refused, with the row or column


@pytest.mark.parametrize("data, message", [
    ("label_column: text", "data: label_column 'text' is the text column: every text would be its own label"),
    ("text_pair_column: text", "data: text_pair_column 'text' is the text column"),
    ("text_pair_column: label", "data: text_pair_column 'label' is the label column"),
])
def test_columns_that_are_the_same_column(recipe_dir, data, message):
    text = tiny_recipe_text().replace("  seed: 7\n", f"  seed: 7\n  {data}\n")
    assert message in recipe_error(recipe_dir, text)


def test_repeated_header_names(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\n" + "".join(f"{t},{y},x\n" for t, y in make_sentences(40)))
    assert "line 1: column 'text' appears 2 times in the header" in refused(path)


@pytest.mark.parametrize("label, kind", [(["pos"], "a list"), ({"name": "pos"}, "a JSON object")])
def test_labels_that_are_not_single_values(tmp_path, label, kind):
    rows = [{"text": t, "label": y} for t, y in make_sentences(40)]
    rows[2]["label"] = label
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert f"line 3: the label in column 'label' is {kind}, not a single value" in refused(path)


def test_texts_empty_after_stripping(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_sentences(40) + [("  \t ", "pos")])
    assert "line 42: empty value in column 'text'" in refused(path)


def test_an_eval_split_too_small_for_a_metric(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_sentences(40))
    message = refused(path, eval_fraction=0.2)  # 8 held out
    assert f"8 eval examples: fewer than {MIN_EVAL_EXAMPLES} make the metric meaningless" in message


def test_a_label_set_as_large_as_the_data(tmp_path):
    """A label_column that is an id column: every row its own label."""
    path = tmp_path / "d.csv"
    path.write_text("text,id\n" + "".join(f"{t},row{i}\n" for i, (t, _) in enumerate(make_sentences(60))))
    message = refused(path, label_column="id", eval_fraction=0.25)
    assert "column 'id' has 45 distinct labels in 45 train rows: that is no label set" in message


def test_a_label_seen_once_in_train(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_sentences(40))
    eval_path = write_csv(tmp_path / "e.csv", make_sentences(12))
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(["a lonely neutral line", "neutral"])
    with pytest.raises(DataError, match=r"d\.csv: line 42: label 'neutral' occurs 1 time in the train split; "
                                        r"every label needs at least 2"):
        load_splits(DataSpec(train=str(path), eval=str(eval_path)))


def test_eval_labels_never_seen_in_train(tmp_path):
    train = write_csv(tmp_path / "t.csv", make_sentences(40))
    eval_path = write_csv(tmp_path / "e.csv", make_sentences(12) + [("a neutral line", "neutral")])
    with pytest.raises(DataError, match=r"e\.csv: line 14: label 'neutral' never occurs in the train split"):
        load_splits(DataSpec(train=str(train), eval=str(eval_path), labels=["neg", "pos", "neutral"]))


# ---------------------------------------------------------------------------- odd but valid


def test_bom_crlf_nul_and_a_very_long_field_are_accepted(tmp_path, tiny_classifier_dir):
    rows = make_sentences(60)
    long_text = "good " * 40_000  # 200,000 characters: past the csv module's default field limit
    body = "".join(f'"{t}",{y}\r\n' for t, y in rows[:-2]) + f'"odd \x00 byte",{rows[-2][1]}\r\n"{long_text}",pos\r\n'
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"text,label\r\n{body}".encode())
    spec = DataSpec(train=str(path), eval_fraction=0.25, max_length=32)
    splits = load_splits(spec)
    texts = splits.train.texts + splits.eval.texts
    assert len(texts) == 60 and "odd \x00 byte" in texts and long_text in texts
    assert splits.label_names == ["neg", "pos"]  # the BOM did not become part of the header
    line = summary_line(splits, spec, tiny_classifier_dir)
    in_train = long_text in splits.train.texts
    assert f"truncated to max_length: {int(in_train)} train / {int(not in_train)} eval" in line


# ---------------------------------------------------------------------------- validate, run and bench alike


def _recipe(recipe_dir, rows) -> str:
    write_csv(recipe_dir / "reviews.csv", rows)
    return str((recipe_dir / "recipe.yaml").resolve())


def test_validate_loads_the_data_and_prints_the_dry_run_summary(recipe_dir):
    (recipe_dir / "recipe.yaml").write_text(tiny_recipe_text())
    path = _recipe(recipe_dir, make_sentences(80))
    runner = CliRunner()
    validated = runner.invoke(app, ["validate", path])
    planned = runner.invoke(app, ["run", "--dry-run", "--out", str(recipe_dir / "runs"), path])
    assert validated.exit_code == 0 and planned.exit_code == 0, validated.output + planned.output
    summary = [line for line in validated.output.splitlines() if line.startswith("data: ")]
    assert summary == [line for line in planned.output.splitlines() if line.startswith("data: ")]
    assert summary[0].startswith("data: train 60 / eval 20 examples, labels ['neg', 'pos'], seed 7, max_length 32")


def test_bad_data_fails_validate_and_run_before_anything_is_written(recipe_dir):
    (recipe_dir / "recipe.yaml").write_text(tiny_recipe_text())
    path = _recipe(recipe_dir, make_sentences(40) + [("", "pos")])
    result = CliRunner().invoke(app, ["validate", path])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: data: ") and "line 42: empty value in column 'text'" in lines[0]
    with pytest.raises(DataError, match="line 42: empty value"):
        run_recipe(load_recipe(path), recipe_dir / "runs", recipe_path=recipe_dir / "recipe.yaml")
    assert not (recipe_dir / "runs").exists()


def test_bench_refuses_bad_data_before_any_cell(tmp_path, tiny_classifier_dir):
    write_csv(tmp_path / "d.csv", make_sentences(40))
    shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    (tmp_path / "bench.yaml").write_text("models: [model]\ntargets: [torch-cpu]\n"
                                         "data: {train: d.csv, eval_fraction: 0.2}\n")
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "8 eval examples" in result.output, result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- property: any data file


cells = st.one_of(st.text(max_size=12), st.sampled_from(["", "  ", "pos", "neg", "x\x00y", "a,b", 'q"uote', "\r"]))
labels = st.one_of(st.sampled_from(["pos", "neg", "neutral", "", " "]), st.integers(0, 3), st.none(),
                   st.lists(st.sampled_from(["pos", "neg"]), max_size=2))


@st.composite
def data_files(draw):
    n = draw(st.one_of(st.integers(0, 12), st.integers(40, 80)))  # too few rows, and enough
    noise = draw(st.sampled_from([0, 0, 0.02, 0.3]))  # share of cells replaced (clean files half the time)
    corrupt = st.floats(0, 1).map(lambda u: u < noise)
    rows = [(draw(cells) if draw(corrupt) else t, draw(labels) if draw(corrupt) else y)
            for t, y in make_sentences(n, seed=draw(st.integers(0, 3)))]
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    header = draw(st.sampled_from([("text", "label")] * 3 + [("text", "text"), ("label", "text"), ("text", "lbl")]))
    return fmt, header, rows, draw(st.booleans()), draw(st.sampled_from([0.1, 0.25, 0.5]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_files())
def test_any_data_file_is_accepted_with_a_true_summary_or_refused_in_one_line(tmp_path_factory, tiny_base_dir,
                                                                              generated):
    fmt, header, rows, bom, fraction = generated
    tmp = tmp_path_factory.mktemp("data")
    path = tmp / f"d.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([(t, "" if y is None else y) for t, y in rows])
    else:
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows), encoding="utf-8")
    spec = DataSpec(train=str(path), eval_fraction=fraction, seed=7, max_length=32)  # as tiny_recipe_text
    try:
        splits = load_splits(spec)
    except CompressError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
        event("refused")
        recipe = tmp / "recipe.yaml"
        recipe.write_text(tiny_recipe_text(train=path.name).replace("eval_fraction: 0.25", f"eval_fraction: {fraction}"))
        shutil.copytree(tiny_base_dir, tmp / "model")
        try:
            run_recipe(load_recipe(recipe), tmp / "runs", recipe_path=recipe)
        except (DataError, RecipeError):
            pass
        assert not (tmp / "runs").exists()  # nothing written before the data passes
        return
    event("accepted")
    assert len(splits.train) + len(splits.eval) == len(rows)
    assert splits.label_names == sorted({str(y).strip() for _, y in rows})
    assert len(splits.eval) >= MIN_EVAL_EXAMPLES
