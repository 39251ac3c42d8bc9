"""`token-classification` (NER): words in, one BIO tag per word out; entity-level
precision / recall / F1 as the seqeval package defines them, per entity type.

Words are tagged through their first sub-token (the other sub-tokens are ignored by the
loss and the metric). An `I-X` that does not continue an `X` entity starts a new one, as
seqeval's default mode and conlleval read it; the data summary counts such tags."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.data_formats import at
from compress.tasks import IGNORED  # the label of sub-tokens and special tokens
from compress.tasks.text_classification import softmax

_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class TokenDataset:
    tokens: list[list[str]]
    tags: list[list]  # per word: the tag string, or its id into tag_names once mapped
    rows: list[int] = field(default_factory=list)  # source line of each sentence's first word
    tag_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # said in the data summary line
    pretokenized = True  # `texts` are word lists

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def texts(self) -> list[list[str]]:
        return self.tokens

    pairs = None

    def subset(self, idx: list[int]) -> TokenDataset:
        return TokenDataset([self.tokens[i] for i in idx], [self.tags[i] for i in idx], [self.rows[i] for i in idx],
                            self.tag_names, self.notes)


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in a BIO sequence, read as seqeval's
    default mode does: B-X starts an entity, I-X continues an X entity and starts one after
    anything else."""
    spans, current = [], None
    for i, tag in enumerate(tags):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append(tuple(current))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = [kind, i, i]
        elif prefix == "I":
            current[2] = i
    if current is not None:
        spans.append(tuple(current))
    return spans


def first_token_positions(word_ids: list[int | None]) -> dict[int, int]:
    """word index → the position of its first sub-token."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


class TokenClassification:
    name = "token-classification"
    optimum_task = "token-classification"
    primary_metric = "entity_f1"
    metric_names = ("entity_f1", "entity_precision", "entity_recall")
    head = "AutoModelForTokenClassification"
    output_names = ("logits",)
    target_keys = ("labels",)
    distribution_axis = -1
    data_columns = ("tokens_column", "tags_column")
    labelled = True
    usage = ('["Alice flew to Paris"]',
             "[{'entities': [{'type': ..., 'text': ..., 'start': ..., 'end': ..., 'score': ...}]}]")

    # ------------------------------------------------------------------ data

    def dataset_from_rows(self, numbered: list[tuple[int, dict]], spec, origin: str) -> TokenDataset:
        from compress.errors import DataError

        tokens_col, tags_col = spec.tokens_column, spec.tags_column
        tokens, tags, lines, orphans = [], [], [], 0
        for line, row in numbered:
            for col in (tokens_col, tags_col):
                if col not in row:
                    raise DataError(f"{at(origin, line)}: no column {col!r}")
                if not isinstance(row[col], list) or not row[col]:
                    raise DataError(f"{at(origin, line)}: column {col!r} must be a non-empty list of strings, "
                                    f"got {str(row[col])[:60]!r}")
            words, word_tags = row[tokens_col], row[tags_col]
            if len(words) != len(word_tags):
                raise DataError(f"{at(origin, line)}: {len(words)} tokens but {len(word_tags)} tags")
            word_lines = row.get("word_lines") or [line] * len(words)  # a CoNLL file has a line per word
            for k, (word, tag) in enumerate(zip(words, word_tags)):
                if not isinstance(word, str) or not word.strip():
                    raise DataError(f"{at(origin, word_lines[k])}: token {k + 1} is empty or not text: {word!r}")
                if not isinstance(tag, str) or not _TAG.match(tag):
                    raise DataError(f"{at(origin, word_lines[k])}: token {k + 1} ({word!r}): tag {tag!r} is not "
                                    "BIO (O, B-<type> or I-<type>)")
                previous = word_tags[k - 1] if k else "O"
                orphans += tag.startswith("I-") and previous[2:] != tag[2:]
            tokens.append([w.strip() for w in words])
            tags.append(list(word_tags))
            lines.append(line)
        notes = [f"{orphans} I- tags without a B- in {Path(origin).name} (each starts an entity, as in seqeval)"] \
            if orphans else []
        return TokenDataset(tokens, tags, lines, notes=notes)

    def label_set(self, dataset: TokenDataset) -> list[str]:
        """O, then B- and I- of every entity type in train (both, so an eval B-X is known even
        when train only has I-X)."""
        kinds = sorted({tag[2:] for sentence in dataset.tags for tag in sentence if tag != "O"})
        return ["O", *(f"{p}-{k}" for k in kinds for p in "BI")]

    def with_label_ids(self, dataset: TokenDataset, names: list[str], origin: str) -> TokenDataset:
        from compress.errors import DataError

        index = {n: i for i, n in enumerate(names)}
        ids = []
        for words, tags, line in zip(dataset.tokens, dataset.tags, dataset.rows):
            for k, tag in enumerate(tags):
                if tag not in index:
                    raise DataError(f"{at(origin, line)}: sentence: token {k + 1} ({words[k]!r}): tag {tag!r} "
                                    f"is not in the tag set {names}")
            ids.append([index[t] for t in tags])
        return TokenDataset(dataset.tokens, ids, dataset.rows, names, dataset.notes)

    def check_splits(self, train: TokenDataset, eval_: TokenDataset, names, train_origin: str, eval_origin: str,
                     spec) -> None:
        """The classification contract on entity types: every eval type seen in train, each
        at least MIN_TRAIN_PER_LABEL times; train must have entities at all."""
        from compress.data_checks import check_label_splits
        from compress.errors import DataError

        kinds = sorted({n[2:] for n in names if n != "O"})
        if not kinds:
            raise DataError(f"{train_origin}: the train split has no entities (every tag is O)")

        def occurrences(ds: TokenDataset) -> tuple[list[int], list[int]]:
            found, lines = [], []
            for tags, line in zip(ds.tags, ds.rows):
                for kind, _, _ in entity_spans([names[t] for t in tags]):
                    found.append(kinds.index(kind))
                    lines.append(line)
            return found, lines

        check_label_splits(*occurrences(train), *occurrences(eval_), len(eval_), kinds, train_origin, eval_origin,
                           f"column {spec.tags_column!r}")

    # ------------------------------------------------------------------ model and features

    def labels_of(self, path: Path) -> list[str] | None:
        from compress.tasks import saved_labels

        return saved_labels(path, "ForTokenClassification")

    def is_trained_for(self, path: Path, labels: list[str]) -> bool:
        return self.labels_of(path) == labels

    def load_model(self, path: Path, labels: list[str], trust_remote_code: bool = False):
        from compress.models import load_model

        return load_model(path, self.head, labels, trust_remote_code)

    def encode(self, tokenizer, dataset: TokenDataset, max_length: int) -> list[dict]:
        enc = tokenizer(dataset.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        features = []
        for i, tags in enumerate(dataset.tags):
            word_ids = enc.word_ids(i)
            first = first_token_positions(word_ids)
            labels = [IGNORED] * len(word_ids)
            for word, position in first.items():
                labels[position] = tags[word]
            features.append({**{k: enc[k][i] for k in enc.keys()}, "labels": labels, "word_ids": word_ids,
                             "example": i})
        return features

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        input_names, pad_id = list(tokenizer.model_input_names), tokenizer.pad_token_id or 0

        def collate(batch: list[dict]) -> dict:
            import torch

            from compress.data import pad_batch

            tensors = {k: torch.from_numpy(v) for k, v in pad_batch(batch, input_names, pad_id).items()}
            width = tensors["input_ids"].shape[1]
            labels = torch.full((len(batch), width), IGNORED, dtype=torch.long)
            for row, b in enumerate(batch):
                labels[row, : len(b["labels"])] = torch.tensor(b["labels"])
            tensors["labels"] = labels
            return tensors

        return collate

    def unlabelled(self, feature: dict) -> dict:
        """An augmented copy's feature: no tags (the label loss skips them), the teacher's only."""
        return {**feature, "labels": [IGNORED] * len(feature["input_ids"])}

    def references(self, dataset: TokenDataset) -> list[dict]:
        """Per sentence: every word's gold tag (words cut off by max_length included: the
        model predicts O for them) and the tag names."""
        return [{"tags": [dataset.tag_names[t] for t in tags], "tag_names": dataset.tag_names}
                for tags in dataset.tags]

    # ------------------------------------------------------------------ outputs

    def word_predictions(self, output: np.ndarray, word_ids: list[int | None], n_words: int) -> list[int | None]:
        """The tag id of every word from its first sub-token; None for words the tokens do not reach."""
        predicted: list[int | None] = [None] * n_words
        for word, position in first_token_positions(word_ids).items():
            if word < n_words:
                predicted[word] = int(output[position].argmax())
        return predicted

    def metrics(self, outputs: list[np.ndarray], features: list[dict], references: list[dict]) -> dict:
        from seqeval.metrics import classification_report

        true, predicted = [], []
        for output, feature, ref in zip(outputs, features, references):
            names = ref["tag_names"]
            ids = self.word_predictions(output, feature["word_ids"], len(ref["tags"]))
            true.append(ref["tags"])
            predicted.append(["O" if i is None else names[i] for i in ids])
        report = classification_report(true, predicted, output_dict=True, zero_division=0)
        micro = report.pop("micro avg")
        for key in ("macro avg", "weighted avg"):
            report.pop(key, None)
        return {
            "entity_f1": float(micro["f1-score"]),
            "entity_precision": float(micro["precision"]),
            "entity_recall": float(micro["recall"]),
            "examples": len(references),
            "entities": int(micro["support"]),
            "per_type": {kind: {"precision": round(float(r["precision"]), 5), "recall": round(float(r["recall"]), 5),
                                "f1": round(float(r["f1-score"]), 5), "support": int(r["support"])}
                         for kind, r in sorted(report.items())},
        }

    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray], features: list[dict]) -> dict:
        """Share of words (first sub-tokens) given the same tag."""
        same = total = 0
        for ref, cand, feature in zip(reference, candidate, features):
            positions = list(first_token_positions(feature["word_ids"]).values())
            same += int((ref[positions].argmax(-1) == cand[positions].argmax(-1)).sum())
            total += len(positions)
        return {"tag_agreement": same / max(1, total)}

    def postprocess(self, outputs: list[np.ndarray], features: list[dict], texts: list[str],
                    pairs: list[str] | None, labels: list[str]) -> list[dict]:
        """Per text: {"entities": [{type, text, start, end, score}]}, character offsets into the
        text; an entity's score is the mean probability of its words' tags."""
        results = []
        for output, feature, text in zip(outputs, features, texts):
            spans = feature["words"]
            probs = softmax(output)
            tag_ids = self.word_predictions(output, feature["word_ids"], len(spans))
            tags = ["O" if t is None else labels[t] for t in tag_ids]
            first = first_token_positions(feature["word_ids"])
            entities = []
            for kind, a, b in entity_spans(tags):
                score = np.mean([probs[first[w]].max() for w in range(a, b + 1)])
                start, end = spans[a][0], spans[b][1]
                entities.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                                 "score": float(score)})
            results.append({"entities": entities})
        return results

    def runtime_inputs(self, dataset: TokenDataset) -> tuple[list[str], None]:
        return [" ".join(words) for words in dataset.tokens], None

    def runtime_features(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> list[dict]:
        """Words are the text's whitespace-separated pieces (the training data's words), with
        their character spans; the tokenizer splits them into sub-tokens."""
        if pairs is not None:
            raise ValueError("token-classification takes single texts, not text pairs")
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()  # padding is per batch
        features = []
        for text in texts:
            words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            e = tokenizer.encode([text[a:b] for a, b in words] or [""], is_pretokenized=True)
            features.append({"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids,
                             "word_ids": e.word_ids, "words": words, "truncated": bool(e.overflowing)})
        return features


TASK = TokenClassification()
