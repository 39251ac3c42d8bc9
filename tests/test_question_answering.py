"""The question-answering task: SQuAD files and rows, windows over long contexts, span
choice, SQuAD scores, the deploy-time features and a tiny span model (offline, fast)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from compress.data_formats import squad_rows
from compress.errors import DataError
from compress.tasks import get_task
from compress.tasks.question_answering import (
    TASK,
    QADataset,
    answer_tokens,
    best_spans,
    exact_match_score,
    f1_score,
    normalize_answer,
)

FILLER = "The committee met again on a rainy Tuesday to discuss the budget for the coming year. "
LONG_CONTEXT = FILLER * 12 + "The bridge was designed by Gustave Eiffel in 1884. " + FILLER * 12
LONG_ANSWER = "Gustave Eiffel"


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_tokenizer_dir)


@pytest.fixture(scope="module")
def light_tokenizer(minilm_tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(minilm_tokenizer_dir / "tokenizer.json"))


def squad_doc(qas_per_paragraph: list[list[dict]], contexts: list[str]) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": qas} for c, qas in zip(contexts, qas_per_paragraph)]}]}


def qa(qid: str, question: str, text: str, start: int) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


def row(question="Who?", context="Ada wrote it.", answers=None, **extra) -> dict:
    return {"question": question, "context": context,
            "answers": [{"text": "Ada", "answer_start": 0}] if answers is None else answers, **extra}


def dataset(rows: list[dict], spec=None) -> QADataset:
    return TASK.dataset_from_rows(list(enumerate(rows, start=1)), spec, "data.jsonl")


def at(context: str, answer: str) -> dict:
    return {"text": answer, "answer_start": context.index(answer)}


# ---------------------------------------------------------------------------- task and data


def test_task_is_found_by_name_and_declares_its_shape():
    task = get_task("question-answering")
    assert task is TASK
    assert (task.primary_metric, task.metric_names) == ("f1", ("f1", "exact_match"))
    assert task.output_names == ("start_logits", "end_logits")
    assert task.target_keys == ("start_positions", "end_positions")
    assert task.distribution_axis == 0 and task.doc_stride == 128
    assert task.labels_of("anywhere") is None


def test_read_squad_and_rows(tmp_path):
    c1, c2 = "Paris is the capital of France.", "The Nile flows north into the Mediterranean Sea."
    doc = squad_doc([[qa("a1", "Capital of France?", "Paris", 0), qa("a2", "Which country?", "France", 24)],
                     [qa("b1", "Where does the Nile flow?", "north", 15)]], [c1, c2])
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    numbered = squad_rows(path)
    assert [n for n, _ in numbered] == [1, 2, 3]
    assert numbered[2][1] == {"id": "b1", "question": "Where does the Nile flow?", "context": c2,
                              "answers": [{"text": "north", "answer_start": 15}]}
    ds = TASK.dataset_from_rows(numbered, None, str(path))
    assert len(ds) == 3 and ds.ids == ["a1", "a2", "b1"] and ds.rows == [1, 2, 3]
    assert ds.answers[1] == [{"text": "France", "start": 24}] and ds.repaired_offsets == 0 and ds.notes == []
    assert ds.texts == ds.questions and ds.pairs == ds.contexts == [c1, c1, c2]
    sub = ds.subset([2, 0])
    assert sub.ids == ["b1", "a1"] and sub.rows == [3, 1] and sub.contexts == [c2, c1]
    assert TASK.references(sub) == [{"answers": ["north"], "context": c2}, {"answers": ["Paris"], "context": c1}]
    assert TASK.label_set(ds) is None and TASK.with_label_ids(ds, None, "x") is ds


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "top level (not a SQuAD file?): expected a JSON object with 'data', got list"),
    ('{"version": "1.1"}', "top level (not a SQuAD file?): no 'data' list"),
    ('{"data": [{"title": "x"}]}', "data[0]: no 'paragraphs' list"),
    ('{"data": ["x"]}', "data[0]: expected a JSON object with 'paragraphs', got str"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": {}}]}]}', "data[0].paragraphs[0]: 'qas' is dict, not a list"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": ["q"]}]}]}',
     "data[0].paragraphs[0].qas[0]: expected a JSON object, got str"),
    ('{"data": []}', "no questions"),
])
def test_malformed_squad_file_is_refused_naming_file_and_place(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(message)) as e:
        squad_rows(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad, message", [
    ({"question": None}, "empty value in column 'question'"),
    ({"question": "  "}, "empty value in column 'question'"),
    ({"context": ""}, "empty value in column 'context'"),
    ({"context": 12}, "column 'context' is not text"),
    ({"answers": "Ada"}, "column 'answers' is not a list of answers"),
    ({"answers": ["Ada"]}, "answer 0 is not an object"),
    ({"answers": [{"text": "", "answer_start": 0}]}, "empty answer text"),
    ({"answers": [{"text": "Ada", "answer_start": "0"}]}, "answer_start of 'Ada' is not an integer"),
    ({"answers": [{"text": "Ada", "answer_start": True}]}, "answer_start of 'Ada' is not an integer: True"),
    ({"answers": {"text": ["Ada"], "answer_start": []}}, "column 'answers' needs lists 'text' and 'answer_start' of the same length"),
    ({"answers": [{"text": "Bob", "answer_start": 0}]}, "answer 'Bob' \\(answer_start 0\\) is not in the context"),
])
def test_bad_row_is_refused_naming_its_line(bad, message):
    rows = [row(), row(), row(**bad)]
    with pytest.raises(DataError, match=f"^data.jsonl: line 3: {message}"):
        dataset(rows)


def test_missing_column_is_refused():
    bad = row()
    del bad["answers"]
    with pytest.raises(DataError, match="line 2: no column 'answers'"):
        dataset([row(), bad])


def test_off_by_one_offsets_are_repaired_and_counted():
    context = "In 1905, Albert Einstein published four papers; Einstein was 26."
    rows = [row(context=context, answers=[{"text": "Albert Einstein", "answer_start": 10}]),  # off by one
            row(context=context, answers=[{"text": "Einstein", "answer_start": 46}]),  # off by two
            row(context=context, answers=[{"text": "1905", "answer_start": 40}]),  # far off: the only occurrence
            row(context=context, answers=[{"text": "Einstein", "answer_start": 16}])]  # right
    ds = dataset(rows)
    assert ds.repaired_offsets == 3 and ds.subset([0]).repaired_offsets == 3  # about the source file
    assert ds.notes == ["3 answer_start offsets in data.jsonl moved onto the answer text"]
    starts = [a[0]["start"] for a in ds.answers]
    assert starts == [9, 48, 3, 16]
    for a, c in zip(ds.answers, ds.contexts):
        assert c[a[0]["start"]:a[0]["start"] + len(a[0]["text"])] == a[0]["text"]


def test_columns_from_spec_hf_answer_form_and_default_ids():
    spec = SimpleNamespace(question_column="q", context_column="c", answers_column="a")
    rows = [{"q": "Who?", "c": "Ada and Bob.", "a": {"text": ["Bob", "Ada"], "answer_start": [8, 0]}},
            {"q": "Who?", "c": "Ada and Bob.", "a": [], "id": 77}]
    ds = dataset(rows, spec)
    assert ds.answers == [[{"text": "Bob", "start": 8}, {"text": "Ada", "start": 0}], []]
    assert ds.ids == ["1", "77"]


def test_check_splits_wants_enough_answered_eval_examples():
    train = dataset([row()] * 20)
    with pytest.raises(DataError, match="eval.jsonl: 9 eval examples: fewer than 10"):
        TASK.check_splits(train, dataset([row()] * 9), None, "train.jsonl", "eval.jsonl", None)
    rows = [row()] * 10 + [row(answers=[])]
    with pytest.raises(DataError, match="eval.jsonl: line 11: no answer"):
        TASK.check_splits(train, dataset(rows), None, "train.jsonl", "eval.jsonl", None)
    TASK.check_splits(train, dataset([row()] * 10), None, "train.jsonl", "eval.jsonl", None)


# ---------------------------------------------------------------------------- windows


def long_dataset(n: int = 2) -> QADataset:
    rows = [row(question="Who designed the bridge?", context=LONG_CONTEXT, answers=[at(LONG_CONTEXT, LONG_ANSWER)])]
    rows += [row(question="What did the committee discuss?", context=LONG_CONTEXT, answers=[at(LONG_CONTEXT, "budget")])]
    return dataset(rows[:n])


def test_encode_windows_a_long_context_and_finds_the_answer_tokens(tokenizer):
    ds = long_dataset()
    features = TASK.encode(tokenizer, ds, 64)
    first = [f for f in features if f["example"] == 0]
    assert len(first) >= 4 and [f["example"] for f in features] == sorted(f["example"] for f in features)
    for f in features:
        assert set(tokenizer.model_input_names) <= set(f) and len(f["input_ids"]) <= 64
        sep = f["input_ids"].index(tokenizer.sep_token_id)
        assert all(o is None for o in f["offsets"][: sep + 1]) and f["offsets"][-1] is None  # question, specials
        assert all(o is not None for o in f["offsets"][sep + 1 : -1])
    holding = [f for f in first if f["start_positions"] != 0]
    assert holding and len(holding) < len(first)
    for f in holding:
        s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
        assert LONG_CONTEXT[s:e] == LONG_ANSWER
    for f in first:
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0
            spans = [o for o in f["offsets"] if o]
            assert not (spans[0][0] <= LONG_CONTEXT.index(LONG_ANSWER) and spans[-1][1] >= LONG_CONTEXT.index(
                LONG_ANSWER) + len(LONG_ANSWER))


def test_answer_tokens_maps_characters_to_tokens():
    offsets = [None, None, None, (0, 3), (4, 9), (9, 10), (11, 15), None]  # "Ada Lovel ace wrot"
    assert answer_tokens(offsets, 4, 10) == (4, 5)
    assert answer_tokens(offsets, 0, 3) == (3, 3)
    assert answer_tokens(offsets, 11, 20) == (0, 0)  # runs past the window
    assert answer_tokens([None, None], 0, 1) == (0, 0)


def test_encode_refuses_a_question_that_leaves_no_room(tokenizer):
    ds = dataset([row(), row(question="why " * 40)])
    with pytest.raises(DataError, match="line 2: the question is 40 tokens: no context token fits in max_length 32"):
        TASK.encode(tokenizer, ds, 32)


def test_runtime_features_match_encode(tokenizer, light_tokenizer):
    ds = long_dataset()
    ds.questions[1] = "what " * 20 + "did the committee discuss?"  # a long question: a smaller stride
    before = (light_tokenizer.truncation, light_tokenizer.padding)
    runtime = TASK.runtime_features(light_tokenizer, ds.questions, ds.contexts, 48)
    assert (light_tokenizer.truncation, light_tokenizer.padding) == before
    encoded = TASK.encode(tokenizer, ds, 48)
    assert len(runtime) == len(encoded) > 8
    for r, e in zip(runtime, encoded):
        for key in ("input_ids", "attention_mask", "token_type_ids", "offsets", "example"):
            assert r[key] == e[key], key


@pytest.mark.parametrize("texts, pairs, message", [
    ("who?", ["c"], "questions must be a list"),
    (["who?"], ["c", "d"], "1 questions but 2 contexts"),
    (["who?"], [None], "contexts\\[0\\] is NoneType"),
    (["who?"], None, "no contexts"),
])
def test_runtime_features_refuse_bad_input(light_tokenizer, texts, pairs, message):
    with pytest.raises(ValueError, match=message):
        TASK.runtime_features(light_tokenizer, texts, pairs, 64)


# ---------------------------------------------------------------------------- spans and scores


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a day; THE end.") == "apple day end"
    assert normalize_answer("theatre") == "theatre"  # only whole articles go
    assert exact_match_score("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert f1_score("Eiffel", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert f1_score("Paris", "London") == 0.0 and f1_score("the", "a") == 0.0  # official v1.1: nothing in common


def pointing(features: list[dict], spans: dict[int, tuple[int, int]], high: float = 8.0) -> list[np.ndarray]:
    """Outputs that point at spans[feature index] = (start token, end token)."""
    outputs = []
    for i, f in enumerate(features):
        logits = np.zeros((len(f["input_ids"]), 2), dtype=np.float32)
        if i in spans:
            logits[spans[i][0], 0] = logits[spans[i][1], 1] = high
        outputs.append(logits)
    return outputs


def test_metrics_score_right_partly_right_and_wrong_spans(tokenizer):
    context = "The river Thames flows through London and into the North Sea."
    ds = dataset([row(question="Where?", context=context, answers=[at(context, "London")])] * 3)
    features = TASK.encode(tokenizer, ds, 64)
    assert len(features) == 3

    def tokens(f, text):
        s = context.index(text)
        return answer_tokens(f["offsets"], s, s + len(text))

    spans = {0: tokens(features[0], "London"), 1: tokens(features[1], "through London"),
             2: tokens(features[2], "North Sea")}
    outputs = pointing(features, spans)
    found = best_spans(outputs, features, ds.contexts)
    assert [s["answer"] for s in found] == ["London", "through London", "North Sea"]
    assert found[0]["start"] == context.index("London") and 0 < found[0]["score"] <= 1
    m = TASK.metrics(outputs, features, TASK.references(ds))
    assert m["examples"] == 3
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert TASK.postprocess(outputs, features, ds.questions, ds.contexts, None)[0] == found[0]


def test_best_window_wins_and_agreement_compares_token_spans(tokenizer):
    ds = long_dataset(1)
    features = TASK.encode(tokenizer, ds, 64)
    right = next(i for i, f in enumerate(features) if f["start_positions"])
    wrong = next(i for i, f in enumerate(features) if not f["start_positions"])
    first_context = next(i for i, o in enumerate(features[wrong]["offsets"]) if o)
    spans = {wrong: (first_context, first_context + 1)}
    spans[right] = (features[right]["start_positions"], features[right]["end_positions"])
    outputs = pointing(features, spans)
    outputs[wrong] *= 0.5  # the wrong window is less sure
    found = best_spans(outputs, features, ds.contexts)
    assert found[0]["answer"] == LONG_ANSWER
    assert TASK.metrics(outputs, features, TASK.references(ds))["exact_match"] == 1.0
    assert TASK.agreement(outputs, outputs, features) == {"span_agreement": 1.0}
    other = pointing(features, {wrong: spans[wrong]})
    assert TASK.agreement(outputs, other, features) == {"span_agreement": 0.0}


def hand_feature() -> tuple[dict, str]:
    context = "a b c d e f"
    offsets = [None, None, None, None] + [(2 * i, 2 * i + 1) for i in range(6)] + [None]  # CLS q q SEP a..f SEP
    return {"example": 0, "input_ids": [0] * len(offsets), "offsets": offsets}, context


def test_best_spans_keep_to_valid_context_spans():
    feature, context = hand_feature()
    logits = np.zeros((11, 2))
    logits[1] = [20, 20]  # a question token: never
    logits[7, 0], logits[5, 1] = 9, 9  # best start after best end: invalid
    logits[6, 0], logits[8, 1] = 5, 5  # valid: "c d e"
    found = best_spans([logits], [feature], [context])[0]
    # start 7 ("d") with end 8 ("e") scores 9 + 5, above 6..8's 5 + 5
    assert found["answer"] == "d e"
    p_start = np.exp(logits[:, 0]) / np.exp(logits[:, 0]).sum()
    p_end = np.exp(logits[:, 1]) / np.exp(logits[:, 1]).sum()
    assert found["score"] == pytest.approx(p_start[7] * p_end[8])
    long = np.zeros((11, 2))
    long[4, 0], long[9, 1] = 10, 10  # "a".."f": 6 tokens
    long[5, 1] = 1
    assert best_spans([long], [feature], [context], max_answer_tokens=6)[0]["answer"] == context
    assert best_spans([long], [feature], [context], max_answer_tokens=2)[0]["answer"] == "a b"


def test_no_context_tokens_means_no_span():
    feature = {"example": 0, "input_ids": [0, 0, 0], "offsets": [None, None, None]}
    assert best_spans([np.ones((3, 2))], [feature], ["ctx"]) == [None]
    m = TASK.metrics([np.ones((3, 2))], [feature], [{"answers": ["ctx"], "context": "ctx"}])
    assert m == {"f1": 0.0, "exact_match": 0.0, "examples": 1}
    assert TASK.postprocess([np.ones((3, 2))], [feature], ["q"], ["ctx"], None) == [
        {"answer": "", "start": None, "end": None, "score": 0.0}]


# ---------------------------------------------------------------------------- batches and a model


def test_collate_pads_and_a_tiny_span_model_trains_on_it(tokenizer):
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    context = "The river Thames flows through London and into the North Sea."
    ds = dataset([row(question="Where does it flow?", context=context, answers=[at(context, "London")]),
                  row(question="Into what?", context=LONG_CONTEXT[:300] + context, answers=[at(context, "North Sea")])])
    features = TASK.encode(tokenizer, ds, 64)
    batch = TASK.collate(tokenizer)(features)
    width = max(len(f["input_ids"]) for f in features)
    assert set(batch) == {*tokenizer.model_input_names, "start_positions", "end_positions"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].shape == (len(features), width)
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in features]
    short = min(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    assert batch["attention_mask"][short, len(features[short]["input_ids"]):].sum() == 0

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertForQuestionAnswering(config)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    logits = torch.stack([out.start_logits, out.end_logits], dim=-1).detach().numpy()
    outputs = [logits[i, : len(f["input_ids"])] for i, f in enumerate(features)]
    m = TASK.metrics(outputs, features, TASK.references(ds))
    assert 0.0 <= m["f1"] <= 1.0 and m["examples"] == 2


def test_load_model_gives_a_two_output_span_head(tiny_base_dir):
    model = TASK.load_model(tiny_base_dir, None)
    assert type(model).__name__ == "BertForQuestionAnswering"
    assert model.qa_outputs.out_features == 2
