"""The light runtime that loads a package written by the `package` stage:
onnxruntime + the Rust `tokenizers` library + numpy, nothing from the training stack
(no torch, no transformers), so a service can `pip install onnxruntime tokenizers numpy`
and serve the model.

    from compress.runtime import Predictor
    predictor = Predictor.load("runs/quickstart/05-package")
    predictor.predict(["a moving, funny film"])  # [{'label': 'fresh', 'score': 0.97, 'scores': {...}}]
    # text pairs: predict(premises, hypotheses); NER: predict(texts) -> [{'entities': [...]}];
    # QA: predict(questions, contexts) -> [{'answer', 'start', 'end', 'score'}]
    # causal LM: generate(prompts, max_new_tokens=64) -> [{'text', 'token_ids', 'prompt_tokens', ...}]
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
CAUSAL_LM = "causal-lm"
_DECODER_KEYS = ("past", "generation")  # deploy.json blocks only a causal-lm package has
GENERATE_BATCH = 8  # prompts decoded together by default (the prefill's logits grow with batch x prompt)


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
    missing = [k for k in _REQUIRED_KEYS + (_DECODER_KEYS if spec.get("task") == CAUSAL_LM else ())
               if k not in spec]
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
        self.path, self.spec, self.session, self.tokenizer = path, spec, session, tokenizer
        self.task_name: str = spec.get("task", "text-classification")
        self.task = None  # a causal LM generates (generate()); the other tasks post-process outputs
        self.decoder = None
        if self.task_name == CAUSAL_LM:
            from compress.generation import Decoder

            try:
                self.decoder = Decoder(session, spec["past"])
            except (ValueError, KeyError, TypeError) as e:
                raise PackageError(f"{path}: the model does not match deploy.json's past layout: {e}") from None
        else:
            from compress.tasks import get_task

            self.task = get_task(self.task_name)
        self.labels: list[str] | None = spec["labels"]
        self.max_length: int = spec["max_sequence_length"]
        self.pad_id: int = spec["tokenizer"]["pad_id"]
        self.batch_size = batch_size
        self.inputs = [(i["name"], _NUMPY_DTYPES[i["dtype"]]) for i in spec["inputs"] if self.decoder is None]
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
        for i in spec["inputs"] if spec.get("task") != CAUSAL_LM else ():  # a decoder's: Decoder checks them
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
        if spec.get("task") == CAUSAL_LM:
            tokenizer.no_truncation()  # a prompt longer than the model's positions is an error, not cut
        return cls(path, spec, session, tokenizer, batch_size)

    def _require_task(self, method: str) -> None:
        if self.task is None:
            raise PackageError(f"{method}() is not for {self.task_name} packages: use generate()")

    def features(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict]:
        """The task's model inputs (unpadded token ids) per text, or per window of a long
        context, truncated to the maximum sequence length with one TruncationWarning naming
        the texts that were cut."""
        self._require_task("features")
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

        self._require_task("run")
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

        if self.task is None or self.task.name != "text-classification":
            raise PackageError(f"predict_proba() is for text-classification packages; this one is {self.task_name}: "
                               "use predict()")
        return softmax(np.stack(self.outputs(texts, text_pairs, batch_size)))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> list[dict]:
        """The task's predictions per text, in input order. text-classification: [{label, score,
        scores}] (text_pairs: the second text of each pair, for NLI or paraphrase models);
        token-classification: [{entities: [{type, text, start, end, score}]}];
        question-answering: texts are the questions, text_pairs their contexts: [{answer, start,
        end, score}]; causal-lm: generate(texts) with its defaults."""
        if self.task_name == CAUSAL_LM:
            if text_pairs is not None:
                raise PackageError("a causal-lm package takes prompts only (no text_pairs)")
            return self.generate(texts, batch_size=batch_size)
        features = self.features(texts, text_pairs)
        return self.task.postprocess(self.run(features, batch_size), features, list(texts),
                                     None if text_pairs is None else list(text_pairs), self.labels)

    # ------------------------------------------------------------------------ causal LM

    def generate(self, prompts: Sequence[str] | Sequence[list[dict]], *, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = (),
                 chat: bool = False, batch_size: int | None = None) -> list[dict]:
        """Continue each prompt (causal-lm packages): greedy unless do_sample (then temperature,
        top_k, top_p, drawn with seed), a KV cache, prompts of similar length batched together
        with left padding. A sequence ends at one of the package's eos token ids, when its text
        contains a stop string (the text is cut before it) or after max_new_tokens (fewer if the
        model's positions run out). chat: apply the package's chat template (needs jinja2) to
        each prompt as a user message (or to a list of {role, content} messages).
        batch_size (default 8, not the load-time batch size): the prefill returns logits for
        every prompt position (batch x prompt x vocab floats: 8 x 512 x 49,152 is 800 MB).
        Returns per prompt: {text, token_ids (the new tokens), prompt_tokens, new_tokens,
        finish_reason: eos | stop | length}."""
        from compress.generation import generate_ids

        if self.decoder is None:
            raise PackageError(f"generate() is for causal-lm packages; this one is {self.task_name}: use predict()")
        sampling = _check_sampling(do_sample, temperature, top_k, top_p)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise PackageError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        stops = _check_stops(stop)
        prompt_ids = self._prompt_ids(prompts, chat)
        gen = self.spec["generation"]
        room = [min(max_new_tokens, gen["max_positions"] - len(ids)) for ids in prompt_ids]

        def contains_stop(row: int, tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens)
            return any(s in text for s in stops)

        rng = np.random.default_rng(seed)  # one stream for the whole call: batches draw in turn
        results: list[dict | None] = [None] * len(prompt_ids)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise PackageError(f"batch_size must be a positive integer, got {batch_size!r}")
        for idx in plan_batches([len(p) for p in prompt_ids], batch_size or GENERATE_BATCH):
            done = generate_ids(self.decoder, [prompt_ids[i] for i in idx], [room[i] for i in idx],
                                set(gen["eos_token_ids"]), gen["pad_token_id"], sampling, rng,
                                contains_stop if stops else None)
            for i, g in zip(idx, done):
                text = self.tokenizer.decode(g.tokens)  # special tokens (eos) left out
                if g.finish_reason == "stop":
                    text = text[: min(text.find(s) for s in stops if s in text)]
                results[i] = {"text": text, "token_ids": g.tokens, "prompt_tokens": len(prompt_ids[i]),
                              "new_tokens": len(g.tokens), "finish_reason": g.finish_reason}
        return results

    def _prompt_ids(self, prompts, chat: bool) -> list[list[int]]:
        """Token ids per prompt, with the tokenizer's special tokens (as transformers'
        tokenizer(prompt) adds them) or, chat, the rendered template's (which holds its own)."""
        from compress.generation import render_chat

        if isinstance(prompts, (str, bytes)):
            raise PackageError("generate() takes a list of prompts, not a single string: wrap it in a list")
        prompts = list(prompts)
        if not prompts:
            raise PackageError("generate() needs at least one prompt (got an empty list)")
        template = self.spec.get("chat_template")
        if chat and not template:
            raise PackageError(f"{self.path}: chat=True, but this package's tokenizer has no chat template")
        max_positions = self.spec["generation"]["max_positions"]
        out = []
        for i, p in enumerate(prompts):
            if chat and isinstance(p, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in p):
                messages = p
            elif isinstance(p, str):
                messages = [{"role": "user", "content": p}]
            else:
                allowed = "a string or a list of {role, content} messages" if chat else "a string"
                raise PackageError(f"prompts[{i}] is {type(p).__name__}: each prompt must be {allowed}")
            if chat:
                try:
                    text = render_chat(template, messages, self.spec["tokenizer"].get("special_tokens", {}))
                except ImportError as e:
                    raise PackageError(str(e)) from None
                except Exception as e:  # a template's raise_exception, or a broken template
                    raise PackageError(f"{self.path}: the chat template failed on prompts[{i}]: {e}") from None
                ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            else:
                ids = self.tokenizer.encode(p).ids
            if not ids:
                raise PackageError(f"prompts[{i}] is empty: it has no tokens to continue")
            if len(ids) >= max_positions:
                raise PackageError(f"prompts[{i}] has {len(ids)} tokens; the model has {max_positions} positions, "
                                   f"so at most {max_positions - 1} prompt tokens leave room for one new token")
            out.append(ids)
        return out


def _check_sampling(do_sample: bool, temperature, top_k, top_p):
    from compress.generation import Sampling

    if do_sample and (not isinstance(temperature, (int, float)) or not temperature > 0):
        raise PackageError(f"temperature must be > 0, got {temperature!r} (use do_sample=False for greedy)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise PackageError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise PackageError(f"top_p must be in (0, 1], got {top_p!r}")
    return Sampling(bool(do_sample), float(temperature) if do_sample else 1.0, top_k, top_p)


def _check_stops(stop) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    stops = list(stop or ())
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise PackageError(f"stop[{i}] must be a non-empty string, got {s!r}")
    return stops
