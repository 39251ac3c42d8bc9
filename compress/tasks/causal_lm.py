"""`causal-lm`: a decoder language model (llama, SmolLM2) measured by perplexity on held-out
text, with next-token top-1 accuracy beside it.

Data: documents, one per row of a `text` column (CSV/JSONL/parquet, ...) or one per
blank-line-separated paragraph of a `.txt` file. Encoding follows Hugging Face's run_clm:
each document is tokenised without special tokens and ended with the eos token, the
documents are concatenated and the stream is cut into blocks of max_length tokens (the
last block may be shorter). A feature is one block: input_ids, attention_mask, and
"example" (the index of the document the block starts in, so a slice of the first n
documents is the blocks that start in them). The loss target is the block itself
(labels = input_ids; the model shifts them).

Perplexity = exp(mean negative log-likelihood over every predicted token of every block):
lower is better, which the ledger, keep_best and the budgets learn from `lower_is_better`.

Outputs: a model's logits are (tokens, vocab) per block, far too big to keep for a whole
eval set (a 256-token block of a 49k vocabulary is 50 MB). `reduce_outputs` turns a batch's
logits into (tokens - 1, 2) per block right after the session returns them: column 0 the
NLL of the true next token, column 1 the model's top-1 next token id. metrics() and
agreement() take either form (raw logits, as a parity check keeps them, or reduced)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.data_formats import at
from compress.tasks import IGNORED

GENERATE = "causal-lm predictions are generated text: use Predictor.generate"


@dataclass
class TextDocuments:
    texts: list[str]
    rows: list[int]  # line (or paragraph start line) in the source

    labels = None
    pairs = None
    windowed = True  # a document longer than max_length spans blocks: nothing is cut off

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> TextDocuments:
        return TextDocuments([self.texts[i] for i in idx], [self.rows[i] for i in idx])


def next_token_nll(logits: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """(tokens - 1, 2) for one block: the NLL of each next token and the top-1 predicted id."""
    scores = logits[:-1].astype(np.float64)
    targets = np.asarray(input_ids[1:], dtype=np.int64)
    peak = scores.max(-1, keepdims=True)
    log_norm = np.log(np.exp(scores - peak).sum(-1)) + peak[:, 0]
    nll = log_norm - scores[np.arange(len(targets)), targets]
    return np.stack([nll, scores.argmax(-1).astype(np.float64)], axis=1)


def _reduced(output: np.ndarray, feature: dict) -> np.ndarray:
    """An output as reduce_outputs leaves it: (tokens - 1, 2) already, or made from raw logits
    (tokens, vocab). The two never have the same shape (tokens - 1 rows against tokens)."""
    n = len(feature["input_ids"])
    if output.shape == (n - 1, 2):
        return output
    return next_token_nll(output, np.asarray(feature["input_ids"]))


class CausalLM:
    name = "causal-lm"
    optimum_task = "text-generation-with-past"
    primary_metric = "perplexity"
    metric_names = ("perplexity", "token_accuracy")
    lower_is_better = frozenset({"perplexity"})
    head = "AutoModelForCausalLM"
    output_names = ("logits",)
    target_keys = ("labels",)
    distribution_axis = -1
    data_columns = ("text_column",)
    labelled = False
    usage = ('"a prompt" (Predictor.generate)', "the generated text")

    # ------------------------------------------------------------------ data

    def dataset_from_rows(self, numbered: list[tuple[int, dict]], spec, origin: str) -> TextDocuments:
        from compress.errors import DataError

        col = spec.text_column
        texts, lines = [], []
        for line, row in numbered:
            if col not in row:
                raise DataError(f"{at(origin, line)}: no column {col!r}")
            value = row[col]
            if not isinstance(value, str):
                raise DataError(f"{at(origin, line)}: column {col!r} is not text: {value!r}"[:200])
            if not value.strip():
                raise DataError(f"{at(origin, line)}: empty value in column {col!r}")
            texts.append(value)
            lines.append(line)
        return TextDocuments(texts, lines)

    def label_set(self, dataset) -> None:
        return None

    def with_label_ids(self, dataset, names, origin: str):
        return dataset

    def check_splits(self, train, eval_, names, train_origin: str, eval_origin: str, spec) -> None:
        from compress.errors import DataError

        if not len(eval_):
            raise DataError(f"{eval_origin}: no eval documents")

    # ------------------------------------------------------------------ model and features

    def labels_of(self, path: Path) -> None:
        return None

    def is_trained_for(self, path: Path, labels) -> bool:
        from compress.tasks import saved_architectures

        return any(a.endswith("ForCausalLM") for a in saved_architectures(path))

    def load_model(self, path: Path, labels=None, trust_remote_code: bool = False):
        from compress.models import load_model

        return load_model(path, self.head, None, trust_remote_code)

    def encode(self, tokenizer, dataset, max_length: int) -> list[dict]:
        from compress.errors import DataError

        if tokenizer.eos_token_id is None:
            raise DataError("causal-lm: the tokenizer has no eos token to separate documents with")
        ids = tokenizer(list(dataset.texts), add_special_tokens=False)["input_ids"]
        stream, starts = [], []  # the concatenated tokens, and where each document begins in them
        for doc in ids:
            starts.append(len(stream))
            stream.extend([*doc, tokenizer.eos_token_id])
        features = []
        doc = 0
        for begin in range(0, len(stream), max_length):
            block = stream[begin : begin + max_length]
            if len(block) < 2:  # nothing to predict
                continue
            while doc + 1 < len(starts) and starts[doc + 1] <= begin:
                doc += 1
            features.append({"input_ids": block, "attention_mask": [1] * len(block), "example": doc})
        return features

    def collate(self, tokenizer) -> Callable[[list[dict]], dict]:
        pad_id = pad_token_id(tokenizer)

        def collate(batch: list[dict]) -> dict:
            import torch

            from compress.data import pad_batch

            arrays = pad_batch(batch, ["input_ids", "attention_mask"], pad_id)
            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
            labels = tensors["input_ids"].clone()
            labels[tensors["attention_mask"] == 0] = IGNORED  # padding predicts nothing
            tensors["labels"] = labels
            return tensors

        return collate

    def references(self, dataset) -> list:
        return [None] * len(dataset)  # the targets are the features' own next tokens

    # ------------------------------------------------------------------ outputs

    def reduce_outputs(self, batch_outputs: np.ndarray, batch: dict, lengths: list[int]) -> list[np.ndarray]:
        """Per block of a padded batch: (tokens - 1, 2) NLL and top-1 id, so no logits outlive the batch."""
        return [next_token_nll(row[:n], ids[:n]) for row, ids, n in zip(batch_outputs, batch["input_ids"], lengths)]

    def metrics(self, outputs: list[np.ndarray], features: list[dict], references: list) -> dict:
        reduced = [_reduced(o, f) for o, f in zip(outputs, features)]
        nll = np.concatenate([r[:, 0] for r in reduced])
        correct = np.concatenate([r[:, 1].astype(np.int64) == np.asarray(f["input_ids"][1:])
                                  for r, f in zip(reduced, features)])
        mean_nll = float(nll.mean())
        return {"perplexity": float(np.exp(mean_nll)), "token_accuracy": float(correct.mean()),
                "mean_nll": mean_nll, "tokens": int(nll.size), "blocks": len(features), "examples": len(references)}

    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray], features: list[dict]) -> dict:
        """How often the two models' top-1 next tokens are the same, over every predicted token."""
        same = np.concatenate([_reduced(r, f)[:, 1] == _reduced(c, f)[:, 1]
                               for r, c, f in zip(reference, candidate, features)])
        return {"next_token_agreement": float(same.mean())}

    def postprocess(self, outputs, features, texts, pairs, labels) -> list[dict]:
        raise ValueError(GENERATE)

    def runtime_inputs(self, dataset) -> tuple[list[str], None]:
        return list(dataset.texts), None

    def runtime_features(self, tokenizer, texts, pairs, max_length) -> list[dict]:
        raise ValueError(GENERATE)


def pad_token_id(tokenizer) -> int:
    """The id padding uses: the pad token, else eos (llama tokenizers have no pad token)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return value
    return 0


TASK = CausalLM()
