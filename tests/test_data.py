from __future__ import annotations

import json

import pytest

from compress.data import DataSpec, encode, iter_batches, load_splits
from compress.errors import DataError
from tests.conftest import make_sentences, write_csv


def spec(path, **kw) -> DataSpec:
    return DataSpec(train=str(path), **kw)


def test_split_is_seeded_disjoint_and_recorded(tiny_csv):
    a = load_splits(spec(tiny_csv, eval_fraction=0.25, seed=3))
    b = load_splits(spec(tiny_csv, eval_fraction=0.25, seed=3))
    c = load_splits(spec(tiny_csv, eval_fraction=0.25, seed=4))
    assert len(a.eval) == 20 and len(a.train) == 60
    assert a.eval.rows == b.eval.rows and a.eval.rows != c.eval.rows
    assert not set(a.eval.rows) & set(a.train.rows)
    assert a.label_names == ["neg", "pos"]  # sorted when not given
    assert a.record["eval"]["rows_sha256"] == b.record["eval"]["rows_sha256"]
    assert a.record["seed"] == 3 and a.record["train"]["size"] == 60


def test_explicit_label_order_and_max_samples(tiny_csv):
    s = load_splits(spec(tiny_csv, labels=["pos", "neg"], eval_fraction=0.25, max_train_samples=10,
                         max_eval_samples=12))
    assert s.label_names == ["pos", "neg"]
    assert len(s.train) == 10 and len(s.eval) == 12
    first = s.train.texts[0]
    assert s.train.labels[0] == (0 if any(w in first for w in ("good", "great", "wonderful", "moving",
                                                                "brilliant", "funny", "charming", "superb")) else 1)


def test_separate_eval_file_tsv_and_jsonl(tmp_path):
    rows = make_sentences(30)
    (tmp_path / "train.tsv").write_text("t\tl\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"t": t, "l": l}) + "\n" for t, l in rows[:12]))
    s = load_splits(DataSpec(train=str(tmp_path / "train.tsv"), eval=str(tmp_path / "eval.jsonl"),
                             text_column="t", label_column="l"))
    assert len(s.train) == 30 and len(s.eval) == 12
    assert s.eval.texts[0] == rows[0][0]


def test_label_outside_the_label_set_names_the_line(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_sentences(10) + [("odd one", "neutral")])
    with pytest.raises(DataError, match=r"d\.csv: line 12: label 'neutral' is not one of the labels \['neg', 'pos'\]"):
        load_splits(spec(path, labels=["neg", "pos"]))


def test_empty_value_names_the_line_and_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_sentences(4) + [("", "pos")])
    with pytest.raises(DataError, match=r"d\.csv: line 6: empty value in column 'text'"):
        load_splits(spec(path))


def test_not_utf8_and_empty_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\ncaf\xe9,pos\n")
    with pytest.raises(DataError, match=r"bad\.csv: not UTF-8 text \(invalid byte at offset 14\)"):
        load_splits(spec(bad))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        load_splits(spec(empty))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: invalid JSON"):
        load_splits(spec(path))


def test_single_label_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a b", "pos")] * 10)
    with pytest.raises(DataError, match="need at least 2 distinct labels"):
        load_splits(spec(path))


def test_builtin_rotten_tomatoes():
    s = load_splits(DataSpec(train="builtin:rotten-tomatoes", seed=13))
    assert s.label_names == ["rotten", "fresh"]
    assert len(s.train) + len(s.eval) == 12808  # fresh 7,403 + rotten 5,405; 'plot' rows dropped
    assert len(s.eval) == 1281
    assert 0.5 < sum(s.eval.labels) / len(s.eval) < 0.65  # fresh is the majority class


def test_batches_are_padded_and_cover_every_example(tiny_classifier_dir, tiny_csv):
    from compress.models import load_tokenizer

    s = load_splits(spec(tiny_csv, eval_fraction=0.25))
    enc = encode(load_tokenizer(tiny_classifier_dir), s.train, max_length=8)
    seen = []
    for idx, batch in iter_batches(enc, ["input_ids", "attention_mask", "token_type_ids"], 16):
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 8
        for row, i in enumerate(idx):
            assert batch["attention_mask"][row].sum() == len(enc[i]["input_ids"])
        seen += idx
    assert sorted(seen) == list(range(len(enc)))
