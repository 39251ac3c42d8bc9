"""`question-answering`: a question and a context in, the span of the context that answers
it out (extractive, SQuAD v1.1 style); SQuAD F1 and exact match.

A long context is cut into overlapping windows ("features"), one model input each; an
example's answer is the best span over all its windows. A feature is a dict: the model
inputs, "example" (its example's index), "offsets" ((start_char, end_char) per context
token, None for question and special tokens) and, when encoded for training or
evaluation, "start_positions"/"end_positions". An output is one (tokens, 2) array per
feature: column 0 start logits, column 1 end logits.

References (what metrics() compares against) are one dict per example:
{"answers": [gold answer texts], "context": the context}: the context is where a predicted
token span's characters come from, and is kept out of the features (one copy per example)."""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.data_formats import at
from compress.errors import DataError

# model input -> the tokenizers.Encoding attribute that fills it (as in compress.runtime)
MODEL_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
PUNCTUATION = frozenset(string.punctuation)


@dataclass
class QADataset:
    ids: list[str]
    questions: list[str]
    contexts: list[str]
    answers: list[list[dict]]  # per example: [{"text": str, "start": character offset into the context}]
    rows: list[int]  # line (or question ordinal) in the source, for messages and the split record
    # Both about the source file, so subset keeps them (as token classification's notes):
    repaired_offsets: int = 0  # answer offsets moved onto their text while reading it
    notes: list[str] = field(default_factory=list)  # said in the data summary line

    windowed = True  # a context longer than max_length becomes several features, never cut

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def texts(self) -> list[str]:
        return self.questions

    @property
    def pairs(self) -> list[str]:
        return self.contexts

    def subset(self, idx: list[int]) -> QADataset:
        return QADataset(
            ids=[self.ids[i] for i in idx],
            questions=[self.questions[i] for i in idx],
            contexts=[self.contexts[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            rows=[self.rows[i] for i in idx],
            repaired_offsets=self.repaired_offsets,
            notes=self.notes,
        )


# ---------------------------------------------------------------------------- rows


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_field(row: dict, column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: no column {column!r}")
    value = row[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: empty value in column {column!r}")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} is not text: {_short(value)}")
    return value


def _raw_answers(value, column: str, where: str) -> list[tuple]:
    """(text, answer_start) pairs from a list of {"text", "answer_start"} objects or the
    Hugging Face datasets form {"text": [...], "answer_start": [...]}."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}: column {column!r} needs lists 'text' and 'answer_start' of the same length: "
                            f"{_short(value)}")
        return list(zip(texts, starts))
    if not isinstance(value, list):
        raise DataError(f"{where}: column {column!r} is not a list of answers: {_short(value)}")
    pairs = []
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{where}: answer {k} is not an object with 'text' and 'answer_start': {_short(item)}")
        pairs.append((item.get("text"), item.get("answer_start")))
    return pairs


def _nearest(context: str, text: str, start: int) -> int | None:
    """The offset of the occurrence of `text` in `context` nearest `start` (SQuAD dev has
    answers whose answer_start is one or two characters off), or None."""
    found, at = [], context.find(text)
    while at != -1:
        found.append(at)
        at = context.find(text, at + 1)
    return min(found, key=lambda i: (abs(i - start), i)) if found else None


def _answers(value, context: str, column: str, where: str) -> tuple[list[dict], int]:
    """The answers with offsets that point at their text, and how many had to be moved."""
    answers, repaired = [], 0
    for text, start in _raw_answers(value, column, where):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty answer text: {_short(text)}")
        if isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where}: answer_start of {text!r} is not an integer: {_short(start)}")
        if start < 0 or context[start : start + len(text)] != text:
            found = _nearest(context, text, start)
            if found is None:
                raise DataError(f"{where}: answer {_short(text)} (answer_start {start}) is not in the context")
            start, repaired = found, repaired + 1
        answers.append({"text": text, "start": start})
    return answers, repaired


# ---------------------------------------------------------------------------- windows and spans


def _stride(question_tokens: int, special_tokens: int, max_length: int, doc_stride: int) -> int | None:
    """Tokens two windows of a context share: at most half the context's room in a window
    (so each window moves on by at least half of it; the tokenizer needs stride < room),
    None when no context token fits beside the question."""
    room = max_length - special_tokens - question_tokens
    return min(doc_stride, room // 2) if room >= 1 else None


def _no_room(question_tokens: int, max_length: int) -> str:
    return f"the question is {question_tokens} tokens: no context token fits in max_length {max_length}"


def _feature(inputs: dict, offsets, sequence_ids, example: int) -> dict:
    return {**inputs, "example": example,
            "offsets": [(int(o[0]), int(o[1])) if s == 1 else None for o, s in zip(offsets, sequence_ids)]}


def answer_tokens(offsets: list, start: int, end: int) -> tuple[int, int]:
    """Token indices of the first and last token of the characters [start, end) in a
    window, or (0, 0) (the CLS token, as HF does for SQuAD) when the window does not hold
    all of them."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return 0, 0
    first, last = context[0], context[-1]
    while first <= context[-1] and offsets[first][0] <= start:
        first += 1
    while last >= context[0] and offsets[last][1] >= end:
        last -= 1
    return first - 1, last + 1


def _token_key(span: tuple | None) -> tuple | None:
    return span[:3] if span else None  # (feature, start token, end token): the probability may differ


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def token_spans(outputs: list, features: list[dict], n_examples: int, max_answer_tokens: int = 30,
                n_best: int = 20) -> list[tuple[int, int, int, float] | None]:
    """Per example, the best (feature index, start token, end token, probability) over its
    features, or None: both tokens in the context, end >= start, at most max_answer_tokens
    tokens, the highest start + end logit among each feature's n_best best starts × n_best
    best ends (as HF's postprocess_qa_predictions). probability: softmax of the feature's
    start logits at the start times softmax of its end logits at the end."""
    best: list[tuple[float, int, int, int] | None] = [None] * n_examples
    for f, (out, feature) in enumerate(zip(outputs, features)):
        logits = np.asarray(out, dtype=np.float64)
        n = min(len(logits), len(feature["offsets"]))  # an output padded past the feature's tokens
        context = np.flatnonzero([o is not None for o in feature["offsets"][:n]])
        if not len(context):
            continue
        start_logits, end_logits = logits[:n, 0], logits[:n, 1]
        starts = context[np.argsort(-start_logits[context], kind="stable")[:n_best]][:, None]
        ends = context[np.argsort(-end_logits[context], kind="stable")[:n_best]][None, :]
        ok = (ends >= starts) & (ends - starts < max_answer_tokens)
        if not ok.any():
            continue
        scores = np.where(ok, start_logits[starts] + end_logits[ends], -np.inf)
        i, j = np.unravel_index(int(scores.argmax()), scores.shape)
        example = feature["example"]
        if best[example] is None or scores[i, j] > best[example][0]:
            best[example] = (float(scores[i, j]), f, int(starts[i, 0]), int(ends[0, j]))
    spans = []
    for found in best:
        if found is None:
            spans.append(None)
            continue
        _, f, s, e = found
        logits = np.asarray(outputs[f], dtype=np.float64)[: len(features[f]["offsets"])]
        spans.append((f, s, e, float(_softmax(logits[:, 0])[s] * _softmax(logits[:, 1])[e])))
    return spans


def best_spans(outputs: list, features: list[dict], contexts: list[str], max_answer_tokens: int = 30,
               n_best: int = 20) -> list[dict | None]:
    """Per example (indexed like `contexts`): {"answer", "start", "end", "score"} with
    character offsets into its context and the span's probability, or None."""
    out = []
    for span, context in zip(token_spans(outputs, features, len(contexts), max_answer_tokens, n_best), contexts):
        if span is None:
            out.append(None)
            continue
        f, s, e, p = span
        start, end = features[f]["offsets"][s][0], features[f]["offsets"][e][1]
        out.append({"answer": context[start:end], "start": start, "end": end, "score": p})
    return out


# ---------------------------------------------------------------------------- SQuAD v1.1 scores


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles,
    single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers (official v1.1: 0 when nothing overlaps,
    even when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------- the task


def _input_problem(texts, pairs) -> str | None:
    """What is wrong with the deploy-time input (questions and their contexts), or None."""
    if pairs is None:
        return "no contexts: question answering needs one context per question (text_pairs)"
    for name, values in (("questions", texts), ("contexts", pairs)):
        if isinstance(values, str) or not isinstance(values, (list, tuple)):
            return f"{name} must be a list of strings, got {type(values).__name__}"
        wrong = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if wrong is not None:
            return f"{name}[{wrong}] is {type(values[wrong]).__name__}, not str: every input must be a string"
    if len(texts) != len(pairs):
        return f"{len(texts)} questions but {len(pairs)} contexts: give one context per question"
    return None


class QuestionAnswering:
    name = "question-answering"
    optimum_task = "question-answering"
    primary_metric = "f1"
    metric_names = ("f1", "exact_match")
    head = "AutoModelForQuestionAnswering"
    output_names = ("start_logits", "end_logits")
    target_keys = ("start_positions", "end_positions")
    distribution_axis = 0  # an output is (tokens, 2): a span's softmax runs over the tokens
    data_columns = ("question_column", "context_column", "answers_column")
    labelled = False
    usage = ('["Who wrote it?"], ["It was written by Alice."]',
             "[{'answer': ..., 'start': ..., 'end': ..., 'score': ...}]")
    doc_stride = 128  # most tokens two windows of a long context share
    max_answer_tokens = 30
    n_best = 20

    # -------------------------------------------------------------- data

    def dataset_from_rows(self, numbered: list[tuple[int, dict]], spec, origin: str) -> QADataset:
        q_col = getattr(spec, "question_column", "question")
        c_col = getattr(spec, "context_column", "context")
        a_col = getattr(spec, "answers_column", "answers")
        ds = QADataset([], [], [], [], [])
        for n, row in numbered:
            where = at(origin, n)
            question, context = _text_field(row, q_col, where), _text_field(row, c_col, where)
            if a_col not in row:
                raise DataError(f"{where}: no column {a_col!r}")
            answers, repaired = _answers(row[a_col], context, a_col, where)
            ds.ids.append(str(row["id"]) if row.get("id") is not None else str(n))
            ds.questions.append(question)
            ds.contexts.append(context)
            ds.answers.append(answers)
            ds.rows.append(n)
            ds.repaired_offsets += repaired
        if ds.repaired_offsets:
            n = ds.repaired_offsets
            ds.notes.append(f"{n} answer_start offset{'s' * (n > 1)} in {Path(origin).name} moved onto the answer text")
        return ds

    def label_set(self, dataset) -> None:
        return None  # spans, not labels

    def with_label_ids(self, dataset, names, origin: str):
        return dataset

    def check_splits(self, train, eval_, names, train_origin: str, eval_origin: str, spec) -> None:
        from compress.data_checks import check_eval_size

        check_eval_size(len(eval_), eval_origin)
        for answers, row in zip(eval_.answers, eval_.rows):
            if not answers:  # it would score 0 whatever the model says
                raise DataError(f"{at(eval_origin, row)}: no answer: every eval question needs a gold answer")

    # -------------------------------------------------------------- model

    def labels_of(self, path: Path) -> None:
        return None

    def is_trained_for(self, path: Path, labels=None) -> bool:
        from compress.tasks import saved_architectures

        return any(a.endswith("ForQuestionAnswering") for a in saved_architectures(path))

    def load_model(self, path: Path, labels=None, trust_remote_code: bool = False):
        from compress.models import load_model

        # Two outputs (start, end) whatever the checkpoint's num_labels: a 3-label NLI
        # checkpoint would otherwise get a 3-column span head that fails in forward().
        return load_model(path, self.head, ["start", "end"], trust_remote_code)

    # -------------------------------------------------------------- features

    def encode(self, tokenizer, dataset: QADataset, max_length: int) -> list[dict]:
        """Features (windows) in example order, with the first answer's token span."""
        if not len(dataset):
            return []
        n_special = tokenizer.num_special_tokens_to_add(pair=True)
        q_lengths = [len(ids) for ids in tokenizer(dataset.questions, add_special_tokens=False)["input_ids"]]
        groups = defaultdict(list)  # one tokenizer call per stride
        for i, q in enumerate(q_lengths):
            stride = _stride(q, n_special, max_length, self.doc_stride)
            if stride is None:
                raise DataError(f"line {dataset.rows[i]}: {_no_room(q, max_length)}")
            groups[stride].append(i)
        per_example: list[list[dict]] = [[] for _ in range(len(dataset))]
        for stride, idx in groups.items():
            enc = tokenizer([dataset.questions[i] for i in idx], [dataset.contexts[i] for i in idx],
                            truncation="only_second", max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
            names = [k for k in tokenizer.model_input_names if k in enc]
            for w, j in enumerate(enc["overflow_to_sample_mapping"]):
                inputs = {k: list(enc[k][w]) for k in names}
                per_example[idx[j]].append(_feature(inputs, enc["offset_mapping"][w], enc.sequence_ids(w), idx[j]))
        features = [f for windows in per_example for f in windows]
        for f in features:
            answers = dataset.answers[f["example"]]
            first = answers[0] if answers else None
            span = answer_tokens(f["offsets"], first["start"], first["start"] + len(first["text"])) if first else (0, 0)
            f["start_positions"], f["end_positions"] = span
        return features

    def runtime_inputs(self, dataset: QADataset) -> tuple[list[str], list[str]]:
        return list(dataset.questions), list(dataset.contexts)

    def runtime_features(self, tokenizer, texts: list[str], pairs: list[str], max_length: int) -> list[dict]:
        """The features encode() makes (without answer positions), from the light
        `tokenizers.Tokenizer` of a package; its truncation and padding are restored after."""
        if problem := _input_problem(texts, pairs):
            raise ValueError(problem)
        questions, contexts = list(texts), list(pairs)
        truncation, padding = tokenizer.truncation, tokenizer.padding
        try:
            tokenizer.no_padding()  # padding is per batch
            tokenizer.no_truncation()
            q_lengths = [len(e.ids) for e in tokenizer.encode_batch(questions, add_special_tokens=False)]
            n_special = tokenizer.num_special_tokens_to_add(True)
            features = []
            for i, (question, context, q) in enumerate(zip(questions, contexts, q_lengths)):
                stride = _stride(q, n_special, max_length, self.doc_stride)
                if stride is None:
                    raise ValueError(f"questions[{i}]: {_no_room(q, max_length)}")
                tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second")
                enc = tokenizer.encode(question, context)
                for window in [enc, *enc.overflowing]:
                    inputs = {name: list(getattr(window, attr)) for name, attr in MODEL_INPUTS.items()}
                    features.append(_feature(inputs, window.offsets, window.sequence_ids, i))
            return features
        finally:
            if truncation:
                tokenizer.enable_truncation(**truncation)
            else:
                tokenizer.no_truncation()
            if padding:
                tokenizer.enable_padding(**padding)
            else:
                tokenizer.no_padding()

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        input_names, pad_id = list(tokenizer.model_input_names), tokenizer.pad_token_id or 0
        targets = self.target_keys

        def collate(batch: list[dict]) -> dict:
            import torch

            from compress.data import pad_batch

            tensors = {k: torch.from_numpy(v) for k, v in pad_batch(batch, input_names, pad_id).items()}
            for key in targets:
                if key in batch[0]:  # runtime features have no answers
                    tensors[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
            return tensors

        return collate

    # -------------------------------------------------------------- outputs

    def references(self, dataset: QADataset) -> list[dict]:
        return [{"answers": [a["text"] for a in answers], "context": context}
                for answers, context in zip(dataset.answers, dataset.contexts)]

    def metrics(self, outputs: list, features: list[dict], references: list[dict]) -> dict:
        contexts = [r["context"] for r in references]
        spans = best_spans(outputs, features, contexts, self.max_answer_tokens, self.n_best)
        em, f1 = [], []
        for span, ref in zip(spans, references):
            prediction, golds = (span["answer"] if span else None), ref["answers"]
            em.append(max((exact_match_score(prediction, g) for g in golds), default=0.0) if span else 0.0)
            f1.append(max((f1_score(prediction, g) for g in golds), default=0.0) if span else 0.0)
        n = len(references)
        return {"f1": sum(f1) / n if n else 0.0, "exact_match": sum(em) / n if n else 0.0, "examples": n}

    def agreement(self, reference: list, candidate: list, features: list[dict]) -> dict:
        n = max((f["example"] for f in features), default=-1) + 1
        ref, cand = (token_spans(o, features, n, self.max_answer_tokens, self.n_best) for o in (reference, candidate))
        same = [_token_key(a) == _token_key(b) for a, b in zip(ref, cand)]
        return {"span_agreement": sum(same) / n if n else 0.0}

    def postprocess(self, outputs: list, features: list[dict], texts: list[str], pairs: list[str],
                    labels=None) -> list[dict]:
        spans = best_spans(outputs, features, list(pairs), self.max_answer_tokens, self.n_best)
        return [span or {"answer": "", "start": None, "end": None, "score": 0.0} for span in spans]


TASK = QuestionAnswering()
