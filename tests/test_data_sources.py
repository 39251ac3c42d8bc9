"""Data through Hugging Face `datasets`: save_to_disk directories, parquet and arrow files, Hub
dataset ids resolved offline from a real Hub cache layout in a temporary HF_HOME, and the
stratified hold-out for classification."""

from __future__ import annotations

from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")

from compress.data import DataSpec, load_splits  # noqa: E402
from compress.errors import DataError  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402
from tests.conftest import make_sentences, tiny_recipe_text  # noqa: E402
from tests.helpers import add_to_hub_cache, recipe_error  # noqa: E402

# label ids in the data set's own order, which is not the sorted one
LABELS = datasets.ClassLabel(names=["rotten", "fresh"])
FEATURES = datasets.Features({"text": datasets.Value("string"), "label": LABELS})


def reviews(n: int, seed: int = 0) -> datasets.Dataset:
    rows = make_sentences(n, seed)
    return datasets.Dataset.from_dict(
        {"text": [t for t, _ in rows], "label": [1 if y == "pos" else 0 for _, y in rows]}, features=FEATURES)


def test_saved_dataset_dict_splits_and_class_label_names(tmp_path):
    datasets.DatasetDict({"train": reviews(60), "validation": reviews(20, seed=1)}).save_to_disk(tmp_path / "saved")
    splits = load_splits(DataSpec(train=str(tmp_path / "saved"), eval_split="validation"))
    assert splits.label_names == ["rotten", "fresh"]  # the ClassLabel's order, not sorted
    assert (len(splits.train), len(splits.eval)) == (60, 20)
    fresh = [t for t, y in zip(splits.eval.texts, splits.eval.labels) if y == 1]
    assert set(fresh) == {t for t, y in make_sentences(20, seed=1) if y == "pos"}
    assert splits.record["train"]["source"].endswith("saved[train]")
    assert splits.record["eval"]["source"].endswith("saved[validation]")
    assert splits.record["train"]["fingerprint"]  # datasets' content hash pins the directory
    with pytest.raises(DataError, match=r"saved\b.*no split 'test' \(splits: train, validation\)"):
        load_splits(DataSpec(train=str(tmp_path / "saved"), eval_split="test"))


def test_parquet_and_arrow_files_number_rows_in_errors(tmp_path):
    reviews(40).to_parquet(str(tmp_path / "train.parquet"))
    arrow = tmp_path / "train.arrow"
    reviews(40).save_to_disk(tmp_path / "one")
    arrow.write_bytes(next((tmp_path / "one").glob("*.arrow")).read_bytes())  # the arrow stream datasets writes
    for path in (tmp_path / "train.parquet", arrow):
        splits = load_splits(DataSpec(train=str(path), eval_fraction=0.25))
        assert splits.label_names == ["rotten", "fresh"] and len(splits.eval) == 10
        assert len(splits.record["source_sha256"][str(path)]) == 64  # the file's content pins it
    bad = reviews(40).to_dict()
    bad["text"][2] = "   "
    datasets.Dataset.from_dict(bad, features=FEATURES).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet: row 3: empty value in column 'text'"):
        load_splits(DataSpec(train=str(tmp_path / "bad.parquet")))
    with pytest.raises(DataError, match="train_split: .*one file: it has no splits"):
        load_splits(DataSpec(train=str(tmp_path / "train.parquet"), train_split="train"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        load_splits(DataSpec(train=str(tmp_path / "junk.parquet")))


def test_token_tags_from_a_class_label_sequence(tmp_path):
    tags = datasets.ClassLabel(names=["O", "B-loc", "I-loc"])
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(tags)})
    words = [["in", "new", "york", "today"], ["see", "paris", "now", "please"]] * 30
    ids = [[0, 1, 2, 0], [0, 1, 0, 0]] * 30
    datasets.Dataset.from_dict({"tokens": words, "tags": ids}, features=features).save_to_disk(tmp_path / "ner")
    splits = load_splits(DataSpec(train=str(tmp_path / "ner"), eval_fraction=0.2), "token-classification")
    assert splits.label_names == ["O", "B-loc", "I-loc"]
    gold = {"new": 1, "york": 2, "paris": 1}  # tag ids per word, as the ClassLabel numbered them
    for ds in (splits.train, splits.eval):
        for words, ids in zip(ds.tokens, ds.tags):
            assert ids == [gold.get(w, 0) for w in words]


README = """---
configs:
- config_name: small
  data_files:
  - split: train
    path: small/train.parquet
  - split: test
    path: small/test.parquet
- config_name: large
  data_files:
  - split: train
    path: large/train.parquet
---
# reviews
"""


@pytest.fixture
def hub_dataset(tmp_path, hub_cache):
    repo = tmp_path / "repo"
    for config, n in (("small", 40), ("large", 80)):
        (repo / config).mkdir(parents=True)
        reviews(n).to_parquet(str(repo / config / "train.parquet"))
        reviews(12, seed=5).to_parquet(str(repo / config / "test.parquet"))
    (repo / "README.md").write_text(README)
    return add_to_hub_cache(hub_cache, "tiny-org/reviews", repo, repo_type="dataset")


def test_hub_dataset_id_with_config_and_split_resolves_offline(tmp_path, hub_dataset, tiny_base_dir):
    import shutil

    shutil.copytree(tiny_base_dir, tmp_path / "model")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(tiny_recipe_text(train="tiny-org/reviews").replace(
        "  train: tiny-org/reviews\n", "  train: tiny-org/reviews\n  config: small\n  eval_split: test\n"))
    recipe = load_recipe(recipe_path)  # what `compress validate` checks: the id resolves, the columns are there
    assert recipe.data.train == "tiny-org/reviews"  # kept as the id, not made a path under the recipe's folder
    splits = load_splits(recipe.data)
    assert (len(splits.train), len(splits.eval)) == (40, 12)  # config 'small', not 'large'
    assert splits.label_names == ["rotten", "fresh"]
    assert splits.record["train"]["hub_commit"] == hub_dataset
    assert splits.record["eval"]["source"] == "tiny-org/reviews[test]"
    with pytest.raises(DataError, match=r"tiny-org/reviews/small\[validation\]: .*split"):
        load_splits(recipe.data.model_copy(update={"eval_split": "validation"}))


def test_hub_dataset_not_cached_is_one_line_naming_id_and_field(tmp_path, hub_cache, tiny_base_dir):
    import shutil

    shutil.copytree(tiny_base_dir, tmp_path / "model")
    message = recipe_error(tmp_path, tiny_recipe_text(train="nobody/no-such-data"))
    assert "recipe.yaml: data.train:" in message and "Hugging Face dataset 'nobody/no-such-data'" in message
    assert "not in the local cache" in message
    message = recipe_error(tmp_path, tiny_recipe_text(train="missing.csv"))  # a file suffix is never a Hub id
    assert "data file not found" in message and "missing.csv" in message


def test_stratified_holdout_keeps_each_label_share():
    rows = [(f"text {i}", "a" if i % 10 else "b") for i in range(200)]  # 180 a, 20 b
    from compress.data import TextDataset, _held_out

    ds = TextDataset([t for t, _ in rows], [0 if y == "a" else 1 for _, y in rows], rows=list(range(1, 201)))
    import random

    eval_idx, train_idx, how = _held_out(ds, 0.15, random.Random(3), stratified=True)
    assert how == "stratified" and len(eval_idx) == 30 and sorted(eval_idx + train_idx) == list(range(200))
    assert Counter(ds.labels[i] for i in eval_idx) == {0: 27, 1: 3}  # 90 % / 10 %, as in the whole
    again, _, _ = _held_out(ds, 0.15, random.Random(3), stratified=True)
    assert again == eval_idx  # seeded
    shuffled = [_held_out(ds, 0.15, random.Random(s), stratified=False)[0] for s in range(20)]
    assert any(Counter(ds.labels[i] for i in e)[1] != 3 for e in shuffled)  # a plain shuffle drifts


def test_stratified_is_the_default_and_recorded(tmp_path):
    from tests.conftest import write_csv

    rows = [(f"good film number {i}" if i % 5 else f"bad film number {i}", "pos" if i % 5 else "neg")
            for i in range(100)]
    write_csv(tmp_path / "d.csv", rows)
    splits = load_splits(DataSpec(train=str(tmp_path / "d.csv"), eval_fraction=0.1))
    assert Counter(splits.eval.labels) == {splits.label_names.index("pos"): 8, splits.label_names.index("neg"): 2}
    assert "stratified" in splits.record["eval"]["source"]
    plain = load_splits(DataSpec(train=str(tmp_path / "d.csv"), eval_fraction=0.1, holdout="shuffled"))
    assert "shuffled" in plain.record["eval"]["source"]
