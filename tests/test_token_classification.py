"""token-classification (NER): CoNLL and JSONL data, the BIO data contract, first-sub-token
labels, entity F1 as seqeval defines it, and the deploy-time Predictor's entity spans."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.data import DataSpec, load_splits
from compress.errors import DataError
from compress.tasks import get_task
from compress.tasks.token_classification import IGNORED, entity_spans

NER = get_task("token-classification")
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
PLACES = ["paris", "london", "berlin", "rome", "madrid", "oslo"]
FILLER = ["met", "in", "the", "city", "of", "yesterday", "with", "and", "went", "to"]


def make_tagged(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Sentences with a person (one or two words) and a place."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        person = rng.sample(PEOPLE, rng.choice([1, 2]))
        words += person
        tags += ["B-person"] + ["I-person"] * (len(person) - 1)
        for w in rng.sample(FILLER, 3):
            words.append(w)
            tags.append("O")
        words.append(rng.choice(PLACES))
        tags.append("B-place")
        out.append((words, tags))
    return out


def write_conll(path, sentences) -> str:
    lines = ["-DOCSTART-\tO", ""]
    for words, tags in sentences:
        lines += [f"{w}\t{t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def ner_conll(tmp_path):
    return write_conll(tmp_path / "ner.conll", make_tagged(60))


def test_conll_file_loads_with_line_numbers_and_a_bio_tag_set(ner_conll):
    splits = load_splits(DataSpec(train=ner_conll, eval_fraction=0.25, seed=1), "token-classification")
    assert splits.label_names == ["O", "B-person", "I-person", "B-place", "I-place"]
    assert len(splits.train) + len(splits.eval) == 60
    # the first sentence starts on line 3 (after -DOCSTART- and a blank line)
    assert 3 in splits.train.rows + splits.eval.rows
    sentence = splits.train.tokens[0]
    assert splits.train.tags[0][0] == splits.label_names.index("B-person") and sentence[0] in PEOPLE


def test_jsonl_columns_are_the_spec_fields(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps({"words": w, "ner": t}) + "\n" for w, t in make_tagged(100)))
    splits = load_splits(DataSpec(train=str(path), tokens_column="words", tags_column="ner"), "token-classification")
    assert len(splits.eval) == 10 and splits.label_names[0] == "O"


@pytest.mark.parametrize("bad, message", [
    ("alice\tB-person\nbob\tPERSON\n", r"line 2: token 2 \('bob'\): tag 'PERSON' is not BIO"),
    ("alice\tB-person\njust-one-field\n", r"line 2: expected 'token<TAB>tag'"),
])
def test_bad_conll_rows_are_refused_with_their_line(tmp_path, bad, message):
    path = tmp_path / "bad.conll"
    path.write_text(bad + "\n" + "\n".join(f"{w}\t{t}\n" for w, t in zip(*make_tagged(1)[0])) * 20)
    with pytest.raises(DataError, match=message):
        load_splits(DataSpec(train=str(path)), "token-classification")


def test_a_tag_outside_the_given_tag_set_is_refused(ner_conll):
    with pytest.raises(DataError, match=r"line \d+: sentence: token 1 \('\w+'\): tag 'B-person' is not in the tag set"):
        load_splits(DataSpec(train=ner_conll, labels=["O", "B-place", "I-place"]), "token-classification")


def test_an_eval_entity_type_never_seen_in_train_is_refused(tmp_path, ner_conll):
    eval_path = write_conll(tmp_path / "eval.conll", [(["acme", "sells"], ["B-company", "O"])] * 12)
    with pytest.raises(DataError, match=r"eval.conll: line \d+: label 'company' never occurs in the train split"):
        load_splits(DataSpec(train=ner_conll, eval=eval_path, labels=["O", "B-person", "I-person", "B-place",
                                                                       "I-place", "B-company", "I-company"]),
                    "token-classification")


def test_i_without_b_is_read_as_seqeval_does_and_said_in_the_summary(tmp_path):
    from compress.data_checks import summary_line

    sentences = make_tagged(100)
    sentences[0] = (["oslo", "is", "cold"], ["I-place", "O", "O"])
    spec = DataSpec(train=write_conll(tmp_path / "ner.conll", sentences))
    splits = load_splits(spec, "token-classification")
    assert "1 I- tags without a B- in ner.conll (each starts an entity, as in seqeval)" in summary_line(splits, spec)
    assert entity_spans(["I-place", "O", "O"]) == [("place", 0, 0)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-a", "I-a", "B-b", "I-b"]), max_size=12))
def test_entity_spans_are_seqevals_entities(tags):
    from seqeval.metrics.sequence_labeling import get_entities

    assert entity_spans(tags) == [tuple(e) for e in get_entities(tags)]


def test_only_the_first_sub_token_of_a_word_is_labelled(tiny_base_dir):
    from compress.models import load_tokenizer
    from compress.tasks.token_classification import TokenDataset

    tokenizer = load_tokenizer(tiny_base_dir)
    ds = TokenDataset([["unbelievably", "paris"]], [[1, 3]], [1], ["O", "B-x", "I-x", "B-y", "I-y"])
    feature = NER.encode(tokenizer, ds, 32)[0]
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces[0] == "[CLS]" and len(pieces) > 4  # "unbelievably" is several word pieces
    labelled = [(p, label) for p, label in zip(pieces, feature["labels"]) if label != IGNORED]
    assert labelled == [(pieces[1], 1), ("paris", 3)]
    batch = NER.collate(tokenizer)([feature, NER.encode(tokenizer, ds.subset([0]), 4)[0]])
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["labels"][1, -1]) == IGNORED


def _outputs_for(tags_per_word: list[list[str]], features, names) -> list[np.ndarray]:
    """Logits that predict the given word tags on each word's first sub-token."""
    from compress.tasks.token_classification import first_token_positions

    outputs = []
    for tags, f in zip(tags_per_word, features):
        out = np.zeros((len(f["input_ids"]), len(names)), dtype=np.float32)
        out[:, 0] = 1.0
        for word, position in first_token_positions(f["word_ids"]).items():
            out[position] = 0.0
            out[position, names.index(tags[word])] = 5.0
        outputs.append(out)
    return outputs


def test_entity_f1_is_seqevals_micro_f1_with_per_type_scores(tiny_base_dir, ner_conll):
    from seqeval.metrics import f1_score

    from compress.models import load_tokenizer

    splits = load_splits(DataSpec(train=ner_conll, eval_fraction=0.25), "token-classification")
    features = NER.encode(load_tokenizer(tiny_base_dir), splits.eval, 64)
    references = NER.references(splits.eval)
    gold = [r["tags"] for r in references]
    perfect = NER.metrics(_outputs_for(gold, features, splits.label_names), features, references)
    assert perfect["entity_f1"] == 1.0 and perfect["per_type"]["person"]["f1"] == 1.0
    # every place missed: half the entities
    no_places = [[t if "place" not in t else "O" for t in tags] for tags in gold]
    got = NER.metrics(_outputs_for(no_places, features, splits.label_names), features, references)
    assert got["entity_f1"] == pytest.approx(f1_score(gold, no_places))
    assert got["per_type"]["place"]["recall"] == 0.0 and got["entity_precision"] == 1.0
    assert got["examples"] == len(gold) and got["entities"] == 2 * len(gold)


def test_words_cut_off_by_max_length_count_as_missed(tiny_base_dir, ner_conll):
    from compress.models import load_tokenizer

    splits = load_splits(DataSpec(train=ner_conll, eval_fraction=0.25), "token-classification")
    features = NER.encode(load_tokenizer(tiny_base_dir), splits.eval, 4)  # [CLS] + 2 words + [SEP]
    references = NER.references(splits.eval)
    got = NER.metrics(_outputs_for([r["tags"] for r in references], features, splits.label_names), features,
                      references)
    assert got["per_type"]["place"]["recall"] == 0.0 and got["entity_precision"] == 1.0


def test_runtime_features_match_training_features(tiny_base_dir, ner_conll):
    from tokenizers import Tokenizer

    from compress.models import load_tokenizer

    splits = load_splits(DataSpec(train=ner_conll, eval_fraction=0.25), "token-classification")
    texts, pairs = NER.runtime_inputs(splits.eval)
    runtime = NER.runtime_features(Tokenizer.from_file(str(tiny_base_dir / "tokenizer.json")), texts, pairs, 64)
    training = NER.encode(load_tokenizer(tiny_base_dir), splits.eval, 64)
    for ours, theirs in zip(runtime, training):
        assert ours["input_ids"] == theirs["input_ids"] and ours["word_ids"] == theirs["word_ids"]


def test_postprocess_returns_entities_with_character_offsets(tiny_base_dir):
    from tokenizers import Tokenizer

    text = "  alice bob  went to paris"
    names = ["O", "B-person", "I-person", "B-place", "I-place"]
    features = NER.runtime_features(Tokenizer.from_file(str(tiny_base_dir / "tokenizer.json")), [text], None, 64)
    outputs = _outputs_for([["B-person", "I-person", "O", "O", "B-place"]], features, names)
    entities = NER.postprocess(outputs, features, [text], None, names)[0]["entities"]
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("person", "alice bob", 2, 11), ("place", "paris", 21, 26)]
    assert all(0.9 < e["score"] <= 1.0 for e in entities)


# ---------------------------------------------------------------------------- property: any tagging file

# no whitespace inside a word: a CoNLL line holds one word (an empty word is still drawn)
words = st.one_of(st.sampled_from(PEOPLE + PLACES + FILLER),
                  st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), max_size=6))
tags = st.sampled_from(["O", "B-person", "I-person", "B-place", "I-place", "B-", "I-x y", "X", "", "o"])


@st.composite
def tagging_files(draw):
    n = draw(st.one_of(st.integers(0, 12), st.integers(40, 70)))
    noise = draw(st.sampled_from([0, 0, 0.02, 0.3]))
    corrupt = st.floats(0, 1).map(lambda u: u < noise)
    sentences = [([draw(words) if draw(corrupt) else w for w in ws], [draw(tags) if draw(corrupt) else t for t in ts])
                 for ws, ts in make_tagged(n, seed=draw(st.integers(0, 3)))]
    return draw(st.sampled_from(["conll", "jsonl"])), sentences, draw(st.sampled_from([0.1, 0.25]))


@settings(max_examples=60, deadline=None)
@given(tagging_files())
def test_any_tagging_file_is_accepted_with_a_true_summary_or_refused_in_one_line(tmp_path_factory, generated):
    from compress.data_checks import summary_line
    from compress.errors import CompressError

    fmt, sentences, fraction = generated
    path = tmp_path_factory.mktemp("ner") / f"d.{fmt}"
    if fmt == "conll":
        write_conll(path, sentences)
    else:
        path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences), encoding="utf-8")
    spec = DataSpec(train=str(path), eval_fraction=fraction, seed=7)
    try:
        splits = load_splits(spec, "token-classification")
    except CompressError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
        return
    kept = [s for s in sentences if s[0]]  # a CoNLL sentence of empty words has no lines
    assert len(splits.train) + len(splits.eval) <= len(kept)
    assert summary_line(splits, spec).startswith(f"train {len(splits.train)} / eval {len(splits.eval)} examples")
    for tags_of_sentence in splits.train.tags + splits.eval.tags:
        assert all(0 <= t < len(splits.label_names) for t in tags_of_sentence)
