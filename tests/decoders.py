"""The tiny llama (tests/conftest.py::tiny_llama_dir) as optimum exports a causal LM
(text-generation-with-past: one decoder graph with past key/values) and as the package
stage packages it; made once per test session and shared by the modules that need them."""

from __future__ import annotations

import shutil
from pathlib import Path

# SmolLM2-Instruct's template (ChatML with a default system message)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_decoder_onnx(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    """optimum's export of the tiny llama (model.onnx, config, generation config, tokenizer)."""
    out = tmp_path_factory.getbasetemp() / "tiny-decoder-onnx"
    if not (out / "model.onnx").is_file():
        from optimum.exporters.onnx import main_export

        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        main_export(str(tiny_llama_dir), str(partial), task="text-generation-with-past")
        partial.rename(out)
    return out


def tiny_decoder_package(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    """The package of the exported tiny llama (build_decoder_package: deploy.json, hashes)."""
    from compress.artifacts import ONNXModel
    from compress.stages.package.decoder import build_decoder_package

    out = tmp_path_factory.getbasetemp() / "tiny-decoder-package"
    if not (out / "deploy.json").is_file():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build_decoder_package(ONNXModel(tiny_decoder_onnx(tmp_path_factory, tiny_llama_dir)), partial, "tiny-lm")
        partial.rename(out)
    return out


def tiny_chat_package(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    """The tiny llama's export with CHATML_TEMPLATE in its tokenizer, packaged."""
    import json

    from compress.artifacts import ONNXModel
    from compress.stages.package.decoder import build_decoder_package

    out = tmp_path_factory.getbasetemp() / "tiny-chat-package"
    if not (out / "deploy.json").is_file():
        src = tmp_path_factory.getbasetemp() / "tiny-chat-onnx"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(tiny_decoder_onnx(tmp_path_factory, tiny_llama_dir), src)
        config = json.loads((src / "tokenizer_config.json").read_text())
        (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML_TEMPLATE}))
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build_decoder_package(ONNXModel(src), partial, "tiny-chat")
        partial.rename(out)
    return out
