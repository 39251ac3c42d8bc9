"""`text-classification`: one text (or a text pair) in, one label out; accuracy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TextClassification:
    name = "text-classification"
    optimum_task = "text-classification"
    primary_metric = "accuracy"
    metric_names = ("accuracy",)
    head = "AutoModelForSequenceClassification"

    def labels_of(self, path: Path) -> list[str] | None:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        id2label, architectures = cfg.get("id2label"), cfg.get("architectures") or []
        if not id2label or not any("ForSequenceClassification" in a for a in architectures):
            return None
        return [id2label[str(i)] for i in range(len(id2label))]

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

    def references(self, dataset) -> list[int]:
        return list(dataset.labels)

    def metrics(self, outputs: np.ndarray, references: list) -> dict[str, float]:
        correct = outputs.argmax(-1) == np.asarray(references)
        return {"accuracy": float(correct.mean()), "examples": len(references)}

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
        return {"label_agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean())}

    def postprocess(self, outputs: np.ndarray, labels: list[str]) -> list[dict]:
        out = []
        for row in softmax(outputs):
            best = int(row.argmax())
            out.append({"label": labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(labels, row)}})
        return out


TASK = TextClassification()
