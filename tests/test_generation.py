"""Predictor.generate on a packaged tiny llama (fp32): the same tokens as transformers'
generate, a KV cache fed back step by step, left-padded batches, eos ids and stop strings,
sampling rules as transformers applies them, chat templates, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compress.generation import (
    Sampling,
    first_call_feed,
    left_pad,
    past_layout,
    positions,
)
from compress.runtime import PackageError, Predictor
from tests.decoders import CHATML_TEMPLATE, tiny_chat_package, tiny_decoder_package

PROMPTS = ["the model", "a long time ago there was a film that", "x"]


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_decoder_package(tmp_path_factory, tiny_llama_dir)


@pytest.fixture(scope="module")
def predictor(package) -> Predictor:
    return Predictor.load(package, threads=1)


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def hf_greedy(hf, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """transformers' generate(do_sample=False), the prompts in one left-padded batch; new
    tokens up to and including eos."""
    import torch

    model, tokenizer = hf
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        eos = [i for i, t in enumerate(row) if t == tokenizer.eos_token_id]
        rows.append(row[: eos[0] + 1] if eos else row)
    return rows


def edited_copy(package: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the package with deploy.json's generation block changed (deploy.json is
    not among the hashed files)."""
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    spec = json.loads((copy / "deploy.json").read_text())
    spec["generation"].update(changes)
    (copy / "deploy.json").write_text(json.dumps(spec))
    return copy


# ---------------------------------------------------------------- parity with transformers


def test_greedy_equals_transformers_generate_token_for_token(predictor, hf):
    """Each prompt alone and the three in one left-padded batch: the tokens transformers picks."""
    for prompt in PROMPTS:
        ours = predictor.generate([prompt], max_new_tokens=24)[0]
        assert ours["token_ids"] == hf_greedy(hf, [prompt], 24)[0], prompt
    batched = predictor.generate(PROMPTS, max_new_tokens=24)
    assert [r["token_ids"] for r in batched] == hf_greedy(hf, PROMPTS, 24)
    assert [r["prompt_tokens"] for r in batched] == [len(hf[1](p)["input_ids"]) for p in PROMPTS]


def test_batching_does_not_change_greedy_tokens(predictor):
    alone = [predictor.generate([p], max_new_tokens=16)[0]["token_ids"] for p in PROMPTS * 2]
    for batch_size in (2, 4, 32):
        together = predictor.generate(PROMPTS * 2, max_new_tokens=16, batch_size=batch_size)
        assert [r["token_ids"] for r in together] == alone


def test_text_counts_and_finish_reason(predictor, hf):
    r = predictor.generate(["the model"], max_new_tokens=7)[0]
    assert r["new_tokens"] == len(r["token_ids"]) == 7 and r["finish_reason"] == "length"
    assert r["text"] == hf[1].decode(r["token_ids"], skip_special_tokens=True)


# ---------------------------------------------------------------- stopping


def test_generation_stops_on_every_eos_id(package, tmp_path):
    """An eos list of two ids (as generation_config.json may hold): the sequence stops at the
    first of either, and the eos token is counted but not in the text."""
    free = Predictor.load(package).generate(["the model"], max_new_tokens=12)[0]["token_ids"]
    stop_at = next(i for i in range(3, 12) if free[i] not in free[:i])  # a token's first appearance
    copy = edited_copy(package, tmp_path, eos_token_ids=[2, free[stop_at]])
    r = Predictor.load(copy).generate(["the model"], max_new_tokens=12)[0]
    assert r["finish_reason"] == "eos" and r["token_ids"] == free[: stop_at + 1]


def test_stop_strings_end_the_sequence_and_are_cut_from_the_text(predictor):
    free = predictor.generate(["a long time ago"], max_new_tokens=16)[0]
    text = free["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop and stop.strip("\ufffd")  # a real piece of text, not a broken byte
    r = predictor.generate(["a long time ago"], max_new_tokens=16, stop=["never appears", stop])[0]
    assert r["finish_reason"] == "stop" and stop not in r["text"]
    assert r["text"] == text[: text.find(stop)]
    assert r["new_tokens"] < free["new_tokens"]


def test_generation_stops_where_the_positions_run_out(package, tmp_path):
    copy = edited_copy(package, tmp_path, max_positions=8)
    p = Predictor.load(copy)
    r = p.generate(["x"], max_new_tokens=50)[0]
    assert r["prompt_tokens"] + r["new_tokens"] == 8 and r["finish_reason"] == "length"
    with pytest.raises(PackageError, match=r"prompts\[0\] has \d+ tokens; the model has 8 positions"):
        p.generate(["a long time ago there was a film that"], max_new_tokens=1)


# ---------------------------------------------------------------- sampling


def test_sampling_filters_as_transformers_warpers_do():
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(0.7, 5, None), (1.0, None, 0.8), (1.3, 10, 0.5), (1.0, None, 0.01)]:
        theirs = torch.from_numpy(logits.copy())
        theirs = TemperatureLogitsWarper(temperature)(None, theirs)
        if top_k:
            theirs = TopKLogitsWarper(top_k)(None, theirs)
        if top_p:
            theirs = TopPLogitsWarper(top_p)(None, theirs)
        ours = Sampling(True, temperature, top_k, top_p).scores(logits)
        np.testing.assert_array_equal(np.isinf(ours), torch.isinf(theirs).numpy())
        kept = ~np.isinf(ours)
        np.testing.assert_allclose(ours[kept], theirs.numpy()[kept], rtol=1e-6)


def test_sampling_is_seeded_and_stays_in_the_top_k(predictor):
    a = predictor.generate(PROMPTS, max_new_tokens=12, do_sample=True, seed=3)
    b = predictor.generate(PROMPTS, max_new_tokens=12, do_sample=True, seed=3)
    c = predictor.generate(PROMPTS, max_new_tokens=12, do_sample=True, seed=4)
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b] != [r["token_ids"] for r in c]
    greedy = predictor.generate(PROMPTS, max_new_tokens=12)
    top1 = predictor.generate(PROMPTS, max_new_tokens=12, do_sample=True, top_k=1, seed=5)
    assert [r["token_ids"] for r in top1] == [r["token_ids"] for r in greedy]
    logits = np.array([[0.0, 5.0, 4.9, 4.8, -1.0, 2.0]])
    draws = {int(Sampling(True, 1.0, 3).choose(logits, np.random.default_rng(i))[0]) for i in range(200)}
    assert draws == {1, 2, 3}


# ---------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def chat_package(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_chat_package(tmp_path_factory, tiny_llama_dir)


def test_chat_prompts_are_tokenized_as_apply_chat_template_does(chat_package):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_package)
    p = Predictor.load(chat_package)
    assert p.spec["chat_template"] == CHATML_TEMPLATE
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the model"}]
    for prompt, messages in [("the model", [{"role": "user", "content": "the model"}]), (conversation, conversation)]:
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        r = p.generate([prompt], max_new_tokens=3, chat=True)[0]
        assert r["prompt_tokens"] == len(expected)
        assert p._prompt_ids([prompt], chat=True)[0] == list(expected)


def test_chat_templates_render_without_transformers_loaded():
    """The runtime renders templates with jinja2 alone (no transformers to have imported its
    extensions first): the ChatML text SmolLM2's template makes."""
    import ast
    import subprocess
    import sys

    code = ("import sys; from compress.generation import render_chat\n"
            f"text = render_chat({CHATML_TEMPLATE!r}, [{{'role': 'user', 'content': 'hi'}}], {{'eos_token': '</s>'}})\n"
            "print(repr(text)); print('transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text, loaded = result.stdout.strip().splitlines()
    assert ast.literal_eval(text) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                          "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert loaded == "False"


def test_chat_without_a_template_is_refused(predictor):
    with pytest.raises(PackageError, match="chat=True, but this package's tokenizer has no chat template"):
        predictor.generate(["hi"], chat=True)


# ---------------------------------------------------------------- deploy.json and bad inputs


def test_past_layout_is_read_from_the_graph_signature():
    inputs = [{"name": f"past_key_values.{i}.{kv}", "dtype": "float16", "shape": ["b", 3, "p", 64]}
              for i in range(30) for kv in ("key", "value")]
    layout = past_layout([{"name": "input_ids", "dtype": "int64", "shape": ["b", "s"]}, *inputs])
    assert (layout["layers"], layout["kv_heads"], layout["head_dim"], layout["dtype"]) == (30, 3, 64, "float16")
    with pytest.raises(ValueError, match="no past_key_values"):
        past_layout(inputs[:0])
    with pytest.raises(ValueError, match=r"incomplete: no past_key_values\.29\.value"):
        past_layout(inputs[:-1])


def test_left_padding_and_positions_follow_transformers():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [1, 1, 0]]


def test_first_call_feed_is_empty_past_and_mask_positions():
    _, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    graph = [("input_ids", ["batch_size", "sequence_length"], np.int64),  # not the feed's: ignored
             ("position_ids", ["batch_size", "sequence_length"], np.int64),
             ("past_key_values.0.key", ["batch_size", 3, "past_sequence_length", 64], np.float16),
             ("past_key_values.0.value", [None, 3, None, 64], "float32")]
    feed = first_call_feed(graph, mask)
    assert list(feed) == ["position_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert feed["position_ids"].tolist() == [[0, 1, 2], [1, 1, 0]] and feed["position_ids"].dtype == np.int64
    assert feed["past_key_values.0.key"].shape == (2, 3, 0, 64) and feed["past_key_values.0.key"].dtype == np.float16
    assert feed["past_key_values.0.value"].dtype == np.float32
    assert "position_ids" not in first_call_feed(graph[2:], mask)  # a graph without positions gets none
    with pytest.raises(ValueError, match=r"past_key_values\.0\.key has shape \['b', 'heads', 'p', 64\]"):
        first_call_feed([("past_key_values.0.key", ["b", "heads", "p", 64], np.float32)], mask)


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": "one string"}, "a list of prompts, not a single string"),
    ({"prompts": []}, "at least one prompt"),
    ({"prompts": ["ok", 3]}, r"prompts\[1\] is int: each prompt must be a string"),
    ({"prompts": [""]}, r"prompts\[0\] is empty"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"do_sample": True, "temperature": 0}, "temperature must be > 0"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"stop": ["ok", ""]}, r"stop\[1\] must be a non-empty string"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_generate_arguments_fail_in_one_line(predictor, kwargs, message):
    kwargs = {"prompts": ["the model"], **kwargs}
    with pytest.raises(PackageError, match=message) as info:
        predictor.generate(kwargs.pop("prompts"), **kwargs)
    assert "\n" not in str(info.value)


def test_classifier_methods_point_a_decoder_package_to_generate(predictor):
    for call in (lambda: predictor.predict_proba(["x"]), lambda: predictor.features(["x"])):
        with pytest.raises(PackageError, match="causal-lm|generate"):
            call()
    assert predictor.predict(["the model"])[0]["token_ids"] == predictor.generate(["the model"])[0]["token_ids"]


def test_a_graph_without_the_recorded_cache_is_refused(package, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    spec = json.loads((copy / "deploy.json").read_text())
    spec["past"]["layers"] = 3
    (copy / "deploy.json").write_text(json.dumps(spec))
    with pytest.raises(PackageError, match=r"does not match deploy.json's past layout: .*past_key_values\.2\.key"):
        Predictor.load(copy)


def test_cli_predict_generates_one_json_line_per_prompt(package, predictor):
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["predict", str(package), "the model", "x", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = predictor.generate(["the model", "x"], max_new_tokens=6)
    assert [r["prompt"] for r in rows] == ["the model", "x"]
    assert [r["token_ids"] for r in rows] == [e["token_ids"] for e in expected]
    refused = CliRunner().invoke(app, ["predict", str(package), "x", "--sample", "--temperature", "0"])
    assert refused.exit_code == 2 and "temperature must be > 0" in refused.output
