"""Autoregressive decoding of an ONNX decoder graph with past key/values (optimum's
`text-generation-with-past` export), with numpy only: the deploy-time Predictor.generate
and the generation benchmark both step the graph through `Decoder`.

The graph contract: inputs input_ids [batch, seq], attention_mask [batch, past + seq],
position_ids [batch, seq] (llama-style models), past_key_values.{i}.key / .value
[batch, kv_heads, past, head_dim], and optionally logits_to_keep (a scalar: the head runs on
the last k positions, 0 for all; optimize_onnx adds it); outputs logits [batch, seq or k,
vocab] and present.{i}.key / .value, which are fed back as the next call's past.

Batches are left-padded, and positions follow transformers' generate (cumulative sum of
the attention mask minus one, padded slots at 1), so greedy decoding here picks the tokens
transformers picks on the same weights."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
LOGITS_TO_KEEP = "logits_to_keep"  # optional scalar input: logits for the last k positions (0: all)
FIRST_CALL_INPUTS = ("position_ids", LOGITS_TO_KEEP)  # besides the past: what first_call_feed fills
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
_PAST_INPUT = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def past_layout(inputs: list[dict]) -> dict:
    """The cache layout of a decoder graph from its input signature (deploy.json `inputs`:
    name, dtype, shape): layers, kv heads, head size, dtype and the tensor names. ValueError
    (one line) when the graph has no past inputs or their shapes are not [batch, heads,
    past, head_dim] with fixed heads and head size."""
    past = {}
    for t in inputs:
        if m := _PAST_INPUT.match(t["name"]):
            past[(int(m.group(1)), m.group(2))] = t
    if not past:
        raise ValueError("the graph has no past_key_values.{i}.key/.value inputs: export it with "
                         "task text-generation-with-past (a decoder with a KV cache)")
    layers = 1 + max(i for i, _ in past)
    missing = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value") if (i, kv) not in past]
    if missing:
        raise ValueError(f"the graph's past inputs are incomplete: no {', '.join(missing[:4])}")
    first = past[(0, "key")]
    shape = first["shape"]
    if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
        raise ValueError(f"{first['name']} has shape {shape}: expected [batch, kv_heads, past, head_dim] "
                         "with fixed kv_heads and head_dim")
    for key, t in past.items():
        if t["shape"][1] != shape[1] or t["shape"][3] != shape[3] or t["dtype"] != first["dtype"]:
            raise ValueError(f"{t['name']} ({t['dtype']}, {t['shape']}) differs from {first['name']} "
                             f"({first['dtype']}, {shape}): mixed cache layouts are not supported")
    return {"layers": layers, "kv_heads": shape[1], "head_dim": shape[3], "dtype": first["dtype"],
            "inputs": [PAST_KEY.replace("{}", "{i}"), PAST_VALUE.replace("{}", "{i}")],
            "outputs": [PRESENT_KEY.replace("{}", "{i}"), PRESENT_VALUE.replace("{}", "{i}")]}


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows as one left-padded batch: (input_ids, attention_mask), int64."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    """transformers' position ids for a (left-padded) attention mask: the count of real
    tokens before each one; padded slots get 1 (they are masked, any value works)."""
    pos = np.cumsum(mask, axis=-1) - 1
    pos[mask == 0] = 1
    return pos.astype(np.int64)


def first_call_feed(graph_inputs: Sequence[tuple[str, Sequence, object]],
                    attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """What a decoder graph with past takes on its first call besides input_ids and
    attention_mask: position_ids (when the graph has that input) counted over the mask,
    logits_to_keep 0 (when it has that input: every position's logits, as evaluation needs), and
    every past_key_values.* input empty, [batch, kv_heads, 0, head_dim] in its own dtype.
    graph_inputs: (name, shape, dtype) of the graph's inputs (others are ignored), symbolic
    dims as str or None, dtype anything np.dtype reads. ValueError (one line) when a past
    input's head count or head size is not a fixed number."""
    batch = attention_mask.shape[0]
    feed = {}
    for name, shape, dtype in graph_inputs:
        if name == "position_ids":
            feed[name] = positions(attention_mask)
        elif name == LOGITS_TO_KEEP:
            feed[name] = np.array(0, dtype=np.int64)
        elif name.startswith(PAST_PREFIX):
            if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
                raise ValueError(f"{name} has shape {list(shape)}: expected [batch, kv_heads, past, head_dim] "
                                 "with fixed kv_heads and head_dim")
            feed[name] = np.zeros((batch, shape[1], 0, shape[3]), dtype=np.dtype(dtype))
    return feed


class Decoder:
    """A decoder graph in an ONNX Runtime session, called one step at a time: the whole
    prompt first (prefill, empty past), then one token per sequence (decode)."""

    def __init__(self, session, layout: dict):
        self.session, self.layout = session, layout
        names = {i.name for i in session.get_inputs()}
        self.uses_positions = "position_ids" in names
        # the last position's logits are all a step reads: where the graph can, compute only those
        self.last_logits = {LOGITS_TO_KEEP: np.array(1, dtype=np.int64)} if LOGITS_TO_KEEP in names else {}
        self.past_names = [n.format(i) for i in range(layout["layers"]) for n in (PAST_KEY, PAST_VALUE)]
        self.output_names = ["logits"] + [n.format(i) for i in range(layout["layers"])
                                          for n in (PRESENT_KEY, PRESENT_VALUE)]
        missing = [n for n in ["input_ids", "attention_mask", *self.past_names] if n not in names]
        if missing:
            raise ValueError(f"the decoder graph has no input {', '.join(missing[:4])}")
        # the layout (deploy.json `past`) as the graph inputs first_call_feed reads
        past_shape = ["batch_size", layout["kv_heads"], "past_sequence_length", layout["head_dim"]]
        self.first_call_inputs = [(n, past_shape, np.dtype(layout["dtype"])) for n in self.past_names]
        if self.uses_positions:
            self.first_call_inputs.append(("position_ids", ["batch_size", "sequence_length"], np.int64))

    def step(self, ids: np.ndarray, mask: np.ndarray,
             past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run ids [batch, seq] with mask [batch, past + seq]; past None is the first call
        (the prompt, empty past). Returns the last position's logits [batch, vocab] (float32)
        and the new past (the graph's present tensors)."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if past is None:
            feed.update(first_call_feed(self.first_call_inputs, mask))
        else:
            feed.update(zip(self.past_names, past))
            if self.uses_positions:
                feed["position_ids"] = positions(mask)[:, -ids.shape[1]:]
        feed.update(self.last_logits)
        logits, *present = self.session.run(self.output_names, feed)
        return logits[:, -1, :].astype(np.float32, copy=False), present


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (argmax) unless do_sample; then temperature,
    top-k and top-p (nucleus) filtering as transformers applies them, drawn from rng."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Logits [batch, vocab] divided by the temperature, with the tokens top-k and top-p
        rule out set to -inf (float64)."""
        scores = logits.astype(np.float64) / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = np.partition(scores, -self.top_k, axis=-1)[:, -self.top_k][:, None]
            scores = np.where(scores < kth, -np.inf, scores)
        if self.top_p is not None and self.top_p < 1.0:
            order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as transformers' TopPLogitsWarper
            cumulative = np.cumsum(_softmax(np.take_along_axis(scores, order, -1)), axis=-1)
            drop_sorted = cumulative <= 1 - self.top_p
            drop_sorted[:, -1] = False  # the most likely token always stays
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, -1)
            scores = np.where(drop, -np.inf, scores)
        return scores

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The next token per row: argmax, or a draw from the filtered distribution."""
        if not self.do_sample:
            return logits.argmax(-1)
        probs = _softmax(self.scores(logits))
        return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass
class Generated:
    """One sequence's new tokens and why it stopped: eos, stop (a stop string or the
    caller's check), length (max_new_tokens or the model's positions)."""

    tokens: list[int]
    finish_reason: str = "length"


def generate_ids(decoder: Decoder, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
                 eos_ids: set[int], pad_id: int, sampling: Sampling = Sampling(),
                 rng: np.random.Generator | None = None,
                 should_stop: Callable[[int, list[int]], bool] | None = None) -> list[Generated]:
    """Decode a batch of token id prompts together (left-padded, one KV cache) until every
    sequence has met an eos id, should_stop(row, new_tokens) or its max_new_tokens. A
    finished row keeps being fed pad tokens (as transformers does) until the batch is done."""
    rng = rng if rng is not None else np.random.default_rng()
    ids, mask = left_pad(prompts, pad_id)
    out = [Generated([]) for _ in prompts]
    live = np.array([n > 0 for n in max_new_tokens])
    past = None  # the first step feeds the prompt with an empty past
    while live.any():
        logits, past = decoder.step(ids, mask, past)
        chosen = sampling.choose(logits, rng)
        for row in np.flatnonzero(live):
            token = int(chosen[row])
            out[row].tokens.append(token)
            if token in eos_ids:
                out[row].finish_reason, live[row] = "eos", False
            elif should_stop is not None and should_stop(row, out[row].tokens):
                out[row].finish_reason, live[row] = "stop", False
            elif len(out[row].tokens) >= max_new_tokens[row]:
                live[row] = False
        if not live.any():
            break
        ids = np.where(live, chosen, pad_id).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
    return out


def render_chat(template: str, messages: list[dict], special_tokens: dict[str, str | None]) -> str:
    """A chat template (Jinja, as transformers' apply_chat_template renders it: sandboxed,
    trim_blocks, lstrip_blocks, loop controls, tojson, raise_exception) filled with the
    messages and the generation prompt. jinja2 is optional: the light install lacks it."""
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat=True renders the package's chat template with jinja2, which is not installed: "
                          "pip install jinja2 (or 'compress[chat]')") from None
    import json
    from datetime import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            **{k: v for k, v in special_tokens.items() if v is not None})
