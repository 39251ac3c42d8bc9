"""`text-classification`: one text (or a text pair: NLI, paraphrase) in, one label out;
accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.data_formats import at
from compress.tasks import IGNORED


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TextClassification:
    name = "text-classification"
    optimum_task = "text-classification"
    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1")
    head = "AutoModelForSequenceClassification"
    output_names = ("logits",)
    target_keys = ("labels",)
    distribution_axis = -1
    data_columns = ("text_column", "label_column", "text_pair_column")
    labelled = True
    usage = ('["some text"]', "[{'label': ..., 'score': ..., 'scores': {...}}]")

    # ------------------------------------------------------------------ data

    def dataset_from_rows(self, numbered: list[tuple[int, dict]], spec, origin: str):
        from compress.data import TextDataset
        from compress.errors import DataError

        text_col, label_col, pair_col = spec.text_column, spec.label_column, spec.text_pair_column
        texts, labels, pairs, lines = [], [], [] if pair_col else None, []
        for line, row in numbered:
            for col in filter(None, (text_col, label_col, pair_col)):
                if col not in row:
                    raise DataError(f"{at(origin, line)}: no column {col!r}")
                value = row[col]
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise DataError(f"{at(origin, line)}: empty value in column {col!r}")
            for col in filter(None, (text_col, pair_col)):
                if not isinstance(row[col], str):
                    raise DataError(f"{at(origin, line)}: column {col!r} is not text: {row[col]!r}")
            label = row[label_col]
            if isinstance(label, (list, dict)):
                raise DataError(f"{at(origin, line)}: the label in column {label_col!r} is a "
                                f"{'list' if isinstance(label, list) else 'JSON object'}, not a single value: "
                                f"{label!r}")
            texts.append(row[text_col])
            labels.append(str(label).strip())
            if pairs is not None:
                pairs.append(row[pair_col])
            lines.append(line)
        return TextDataset(texts, labels, pairs, lines)  # type: ignore[arg-type]

    def label_set(self, dataset) -> list[str]:
        return sorted(set(dataset.labels))

    def with_label_ids(self, dataset, names: list[str], origin: str):
        from compress.data import TextDataset
        from compress.errors import DataError

        index = {n: i for i, n in enumerate(names)}
        ids = []
        for raw, line in zip(dataset.labels, dataset.rows):
            if raw not in index:
                raise DataError(f"{at(origin, line)}: label {raw!r} is not one of the labels {names}")
            ids.append(index[raw])
        return TextDataset(dataset.texts, ids, dataset.pairs, dataset.rows)

    def check_splits(self, train, eval_, names, train_origin: str, eval_origin: str, spec) -> None:
        from compress.data_checks import check_label_splits

        check_label_splits(train.labels, train.rows, eval_.labels, eval_.rows, len(eval_), names,
                           train_origin, eval_origin, f"column {spec.label_column!r}")

    # ------------------------------------------------------------------ model and features

    def labels_of(self, path: Path) -> list[str] | None:
        from compress.tasks import saved_labels

        return saved_labels(path, "ForSequenceClassification")

    def is_trained_for(self, path: Path, labels: list[str]) -> bool:
        return self.labels_of(path) == labels

    def load_model(self, path: Path, labels: list[str], trust_remote_code: bool = False):
        from compress.models import load_model

        return load_model(path, self.head, labels, trust_remote_code)

    def encode(self, tokenizer, dataset, max_length: int) -> list[dict]:
        from compress.data import encode

        return [{**enc, "label": y} for enc, y in zip(encode(tokenizer, dataset, max_length), dataset.labels)]

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        input_names, pad_id = list(tokenizer.model_input_names), tokenizer.pad_token_id or 0

        def collate(batch: list[dict]) -> dict:
            import torch

            from compress.data import pad_batch

            tensors = {k: torch.from_numpy(v) for k, v in pad_batch(batch, input_names, pad_id).items()}
            tensors["labels"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
            return tensors

        return collate

    def unlabelled(self, feature: dict) -> dict:
        """An augmented copy's feature: no label (the label loss skips it), the teacher's only."""
        return {**feature, "label": IGNORED}

    def references(self, dataset) -> list[int]:
        return list(dataset.labels)

    # ------------------------------------------------------------------ outputs

    def metrics(self, outputs: list[np.ndarray], features: list[dict], references: list) -> dict:
        """Accuracy and macro-F1 (the unweighted mean of the per-class F1s), and per class the
        precision / recall / F1 / support and the confusion matrix (rows: true, columns: predicted)."""
        predicted, true = np.stack(outputs).argmax(-1), np.asarray(references)
        n = np.stack(outputs).shape[-1]
        confusion = np.zeros((n, n), dtype=np.int64)
        np.add.at(confusion, (true, predicted), 1)
        tp = np.diag(confusion).astype(np.float64)
        precision = np.divide(tp, confusion.sum(0), out=np.zeros(n), where=confusion.sum(0) > 0)
        recall = np.divide(tp, confusion.sum(1), out=np.zeros(n), where=confusion.sum(1) > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
        return {
            "accuracy": float((predicted == true).mean()),
            "macro_f1": float(f1.mean()),
            "examples": len(references),
            "per_class": [{"precision": round(float(p), 5), "recall": round(float(r), 5), "f1": round(float(f), 5),
                           "support": int(s)} for p, r, f, s in zip(precision, recall, f1, confusion.sum(1))],
            "confusion_matrix": confusion.tolist(),
        }

    def example_predictions(self, outputs: list[np.ndarray], features: list[dict]) -> list[int]:
        return [int(i) for i in np.stack(outputs).argmax(-1)]

    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray], features: list[dict]) -> dict:
        return {"label_agreement": float((np.stack(reference).argmax(-1) == np.stack(candidate).argmax(-1)).mean())}

    def postprocess(self, outputs: list[np.ndarray], features: list[dict], texts: list[str],
                    pairs: list[str] | None, labels: list[str]) -> list[dict]:
        out = []
        for row in softmax(np.stack(outputs)):
            best = int(row.argmax())
            out.append({"label": labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(labels, row)}})
        return out

    def runtime_inputs(self, dataset) -> tuple[list[str], list[str] | None]:
        return list(dataset.texts), None if dataset.pairs is None else list(dataset.pairs)

    def runtime_features(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> list[dict]:
        """Token ids per text (or text pair) with the light tokenizers library."""
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()  # padding is per batch
        encodings = tokenizer.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))
        return [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids,
                 "truncated": bool(e.overflowing)} for e in encodings]


TASK = TextClassification()
