"""The light runtime that loads a package written by the `package` stage:
onnxruntime + the Rust `tokenizers` library + numpy, nothing from the training stack
(no torch, no transformers), so a service can `pip install onnxruntime tokenizers numpy`
and serve the model.

    from compress.runtime import Predictor
    predictor = Predictor.load("runs/quickstart/05-package")
    predictor.predict(["a moving, funny film"])  # [{'label': 'fresh', 'score': 0.97, 'scores': {...}}]
    # text pairs: predict(premises, hypotheses); NER: predict(texts) -> [{'entities': [...]}];
    # QA: predict(questions, contexts) -> [{'answer', 'start', 'end', 'score'}]
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.files import file_sha256

DEPLOY_FILE = "deploy.json"
FORMAT = "compress-package/1"

# ONNX input name -> the tokenizers.Encoding attribute that fills it
_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_NUMPY_DTYPES = {"int64": np.int64, "int32": np.int32}
_REQUIRED_KEYS = ("model", "inputs", "outputs", "labels", "max_sequence_length", "tokenizer", "files")


class PackageError(CompressError):
    """A package is missing, corrupt, or was called with bad input."""


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's maximum sequence length and were cut."""


def read_deploy_spec(package: Path) -> dict:
    path = package / DEPLOY_FILE
    if not path.is_file():
        raise PackageError(f"{package}: not a compress package (no {DEPLOY_FILE})")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise PackageError(f"{path}: unsupported package format {found!r} (expected {FORMAT!r})")
    missing = [k for k in _REQUIRED_KEYS if k not in spec]
    if missing:
        raise PackageError(f"{path}: missing {', '.join(missing)}")
    return spec


def verify_files(package: Path, spec: dict) -> None:
    """Every file deploy.json lists must exist with the recorded sha256."""
    for name, expected in spec["files"].items():
        path = package / name
        if not path.is_file():
            raise PackageError(f"{path}: file listed in {DEPLOY_FILE} is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise PackageError(
                f"{path}: sha256 mismatch ({actual[:12]}… != {expected[:12]}… in {DEPLOY_FILE}): "
                "the file is corrupt or was changed after packaging"
            )


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding). Shared with the
    package stage's validation so both sides run the same batch compositions."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise PackageError(f"predict() takes a list of {name}, not a single string: wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise PackageError(f"predict() takes a list of {name}, got {type(texts).__name__}") from None
    if not texts:
        raise PackageError(f"predict() needs at least one {'text' if name == 'texts' else 'text pair'} "
                           "(got an empty list)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise PackageError(f"{name}[{i}] is {type(t).__name__}, not str: every input must be a string")
    return texts


class Predictor:
    """A packaged model: tokenize, pad per batch, run ONNX Runtime, and let the package's
    task (deploy.json `task`) turn the outputs into predictions."""

    def __init__(self, path: Path, spec: dict, session, tokenizer, batch_size: int = 32):
        from compress.tasks import get_task

        self.path, self.spec, self.session, self.tokenizer = path, spec, session, tokenizer
        self.task = get_task(spec.get("task", "text-classification"))
        self.labels: list[str] | None = spec["labels"]
        self.max_length: int = spec["max_sequence_length"]
        self.pad_id: int = spec["tokenizer"]["pad_id"]
        self.batch_size = batch_size
        self.inputs = [(i["name"], _NUMPY_DTYPES[i["dtype"]]) for i in spec["inputs"]]
        self.output_names: list[str] = [o["name"] for o in spec["outputs"]]

    @classmethod
    def load(cls, path: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
             batch_size: int = 32, verify: bool = True) -> Predictor:
        """Open a package directory. verify: check every file's sha256 against deploy.json
        first, so a truncated download or an edited file fails here, not with wrong answers."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_dir():
            raise PackageError(f"{path}: package directory not found")
        spec = read_deploy_spec(path)
        if verify:
            verify_files(path, spec)
        for i in spec["inputs"]:
            if i["name"] not in _ENCODING_FIELDS or i["dtype"] not in _NUMPY_DTYPES:
                raise PackageError(f"{path}: model input {i['name']} ({i['dtype']}) is not one the runtime can fill")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path / spec["model"]["onnx"]), opts,
                                           providers=providers or ["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(path / spec["tokenizer"]["file"]))
        except Exception as e:  # corrupt file with verify=False, unknown provider: one clear line
            raise PackageError(f"{path}: cannot load the package: {type(e).__name__}: {e}") from None
        tokenizer.no_padding()  # padding is per batch, below
        return cls(path, spec, session, tokenizer, batch_size)

    def features(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict]:
        """The task's model inputs (unpadded token ids) per text, or per window of a long
        context, truncated to the maximum sequence length with one TruncationWarning naming
        the texts that were cut."""
        texts = _check_texts(texts)
        pairs = None if text_pairs is None else _check_texts(text_pairs, "text_pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise PackageError(f"predict() got {len(texts)} texts but {len(pairs)} text_pairs: give one pair per text")
        try:
            features = self.task.runtime_features(self.tokenizer, texts, pairs, self.max_length)
        except ValueError as e:
            raise PackageError(f"{self.path}: {e}") from None
        cut = [i for i, f in enumerate(features) if f.get("truncated")]
        if cut:
            shown = ", ".join(f"texts[{i}]" for i in cut[:5]) + (" …" if len(cut) > 5 else "")
            warnings.warn(f"{len(cut)} of {len(texts)} texts are longer than {self.max_length} tokens and were "
                          f"truncated ({shown})", TruncationWarning, stacklevel=2)
        return features

    def _pad(self, encoded: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
        width = max(len(e["input_ids"]) for e in encoded)
        batch = {}
        for name, dtype in self.inputs:
            arr = np.full((len(encoded), width), self.pad_id if name == "input_ids" else 0, dtype=dtype)
            for row, e in enumerate(encoded):
                arr[row, : len(e[name])] = e[name]
            batch[name] = arr
        return batch

    def run(self, features: list[dict], batch_size: int | None = None) -> list[np.ndarray]:
        """The model's raw outputs per feature, in order (several outputs stacked on the last
        axis; per-token outputs trimmed to the feature's tokens)."""
        from compress.tasks import combine_outputs, split_rows

        rows: list[np.ndarray | None] = [None] * len(features)
        for idx in plan_batches([len(f["input_ids"]) for f in features], batch_size or self.batch_size):
            chunk = [features[i] for i in idx]
            out = combine_outputs(self.session.run(self.output_names, self._pad(chunk)))
            for i, row in zip(idx, split_rows(out, [len(f["input_ids"]) for f in chunk])):
                rows[i] = row
        return rows

    def outputs(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> list[np.ndarray]:
        """The model's raw outputs (e.g. logits) per feature, in input order."""
        return self.run(self.features(texts, text_pairs), batch_size)

    def predict_proba(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                      batch_size: int | None = None) -> np.ndarray:
        """Text classification: class probabilities, one row per text, in input order."""
        from compress.tasks.text_classification import softmax

        if self.task.name != "text-classification":
            raise PackageError(f"predict_proba() is for text-classification packages; this one is {self.task.name}: "
                               "use predict()")
        return softmax(np.stack(self.outputs(texts, text_pairs, batch_size)))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> list[dict]:
        """The task's predictions per text, in input order. text-classification: [{label, score,
        scores}] (text_pairs: the second text of each pair, for NLI or paraphrase models);
        token-classification: [{entities: [{type, text, start, end, score}]}];
        question-answering: texts are the questions, text_pairs their contexts: [{answer, start,
        end, score}]."""
        features = self.features(texts, text_pairs)
        return self.task.postprocess(self.run(features, batch_size), features, list(texts),
                                     None if text_pairs is None else list(text_pairs), self.labels)
