"""The package of a causal LM (compress/stages/package/decoder.py) on optimum's export of
the tiny llama: deploy.json's cache layout, generation settings and hashes, and the
validation generation, which must fail when the package would generate other tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compress.artifacts import ONNXModel
from compress.errors import StageError
from compress.runtime import Predictor, verify_files
from compress.stages.package.decoder import (
    build_decoder_package,
    prompt_prefixes,
    validate_generation,
)
from tests.decoders import tiny_decoder_onnx, tiny_decoder_package


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_decoder_onnx(tmp_path_factory, tiny_llama_dir)


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_decoder_package(tmp_path_factory, tiny_llama_dir)


def test_deploy_json_describes_the_decoder(package, tiny_llama_dir):
    spec = json.loads((package / "deploy.json").read_text())
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert spec["task"] == "causal-lm" and spec["precision"] == "fp32" and spec["labels"] is None
    names = [i["name"] for i in spec["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert [o["name"] for o in spec["outputs"]] == ["logits"] + [f"present.{i}.{kv}" for i in range(2)
                                                                 for kv in ("key", "value")]
    past = spec["past"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert (past["layers"], past["kv_heads"], past["head_dim"], past["dtype"]) == (
        config["num_hidden_layers"], config["num_key_value_heads"], head_dim, "float32")
    gen = spec["generation"]
    assert gen["eos_token_ids"] == [config["eos_token_id"]] and gen["bos_token_id"] == config["bos_token_id"]
    assert gen["max_positions"] == spec["max_sequence_length"] == config["max_position_embeddings"]
    assert gen["pad_token_id"] == config["eos_token_id"]  # the tokenizer has no pad token: eos pads, as in generate
    assert spec["chat_template"] is None and spec["tokenizer"]["padding"] == "left"
    assert {"model.onnx", "tokenizer.json", "config.json", "generation_config.json"} <= set(spec["files"])
    assert not (package / "triton").exists()
    verify_files(package, spec)


def test_every_eos_id_of_generation_config_is_recorded(onnx_dir, tmp_path):
    src = tmp_path / "onnx"
    shutil.copytree(onnx_dir, src)
    gen = json.loads((src / "generation_config.json").read_text())
    (src / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [2, 7, 11], "pad_token_id": 0}))
    spec = build_decoder_package(ONNXModel(src), tmp_path / "pkg", "x")
    assert spec["generation"]["eos_token_ids"] == [2, 7, 11] and spec["generation"]["pad_token_id"] == 0


def test_validation_generates_the_reference_tokens(package, onnx_dir):
    prompts = prompt_prefixes(["the model was trained on a lot of text and it was good", "x y z"], onnx_dir, 4)
    assert prompts[0] == "the model was trained" or len(prompts[0]) < len("the model was trained on")
    result = validate_generation(package, ONNXModel(onnx_dir), prompts, 10, threads=1)
    assert result["token_agreement"] == 1.0 and result["examples"] == 2
    assert result["new_tokens"] == sum(r["new_tokens"] for r in Predictor.load(package).generate(
        prompts, max_new_tokens=10, batch_size=1))


def test_validation_fails_when_the_package_would_stop_elsewhere(package, onnx_dir, tmp_path):
    """A wrong eos id in deploy.json (an id greedy decoding emits) ends generation early:
    the validation names the prompt and the token where the two part."""
    emitted = Predictor.load(package).generate(["the model"], max_new_tokens=10)[0]["token_ids"]
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    spec = json.loads((copy / "deploy.json").read_text())
    spec["generation"]["eos_token_ids"] = [emitted[4]]
    (copy / "deploy.json").write_text(json.dumps(spec))
    with pytest.raises(StageError, match=r"greedy generation of prompt 0 differs .* at new token [1-5] "):
        validate_generation(copy, ONNXModel(onnx_dir), ["the model"], 10, threads=1)


def test_validation_fails_on_a_tokenizer_that_splits_text_differently(package, onnx_dir, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:5]  # most merges gone: more, shorter tokens
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    spec = json.loads((copy / "deploy.json").read_text())
    from compress.stages.package.deploy import write_deploy_spec

    write_deploy_spec(copy, spec)  # re-hash: the check under test is the tokenization, not the hash
    with pytest.raises(StageError, match="tokenizes prompt 0 .* differently from the training tokenizer"):
        validate_generation(copy, ONNXModel(onnx_dir), ["the model was trained"], 4, threads=1)
