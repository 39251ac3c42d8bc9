"""The package of a causal LM (an ONNX decoder with past key/values): deploy.json gets the
cache layout read from the graph, the generation settings (eos ids, bos, pad, positions)
and the chat template; validation runs a short greedy generation in the packaged runtime
and requires the same tokens as a plain greedy loop over an ONNX Runtime session of the
input graph with the training tokenizer. Both run the same graph on the same inputs (batch
1, no padding), so the tokens must match exactly: any difference is a packaging fault
(a tokenizer, an eos id, the cache feeding), not numerical noise.

No Triton repository: serving a stateful decoder there needs the python or ensemble
backend around the graph (the KV cache lives between requests), which a config.pbtxt
alone does not give."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.artifacts import ONNXModel
from compress.errors import StageError
from compress.generation import LOGITS_TO_KEEP

TRITON_SKIPPED = ("no Triton repository for causal-lm: a decoder with a KV cache needs Triton's python or "
                  "ensemble backend to keep the cache between steps, not a plain onnxruntime model config")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def generation_settings(src: Path) -> dict:
    """eos ids (every id of generation_config's eos list: transformers' generate stops on
    each), bos, pad and the model's positions, from the checkpoint files beside the graph."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(src)
    try:
        gen = GenerationConfig.from_pretrained(src)
    except OSError:  # no generation_config.json: transformers' generate falls back to the model config
        gen = GenerationConfig.from_model_config(config)
    tokenizer = AutoTokenizer.from_pretrained(src)
    eos = _as_list(gen.eos_token_id) or _as_list(tokenizer.eos_token_id)
    if not eos:
        raise StageError(f"{src}: no eos token id in generation_config.json, config.json or the tokenizer: "
                         "generation could never stop before max_new_tokens")
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not max_positions:
        raise StageError(f"{src}/config.json: no max_position_embeddings (the model's longest sequence)")
    pad = next((int(v) for v in (gen.pad_token_id, tokenizer.pad_token_id) if v is not None), eos[0])
    bos = gen.bos_token_id if gen.bos_token_id is not None else tokenizer.bos_token_id
    return {"eos_token_ids": eos, "bos_token_id": bos, "pad_token_id": pad, "max_positions": int(max_positions)}


def tokenizer_facts(src: Path) -> tuple[str | None, dict[str, str | None]]:
    """The chat template (None when the tokenizer has none) and the special tokens' text,
    which templates refer to (bos_token, eos_token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    return template, {n: getattr(tokenizer, n) for n in names}


def decoder_fields(src: Path, inputs: list[dict]) -> dict:
    """deploy.json's causal-lm blocks: past (the cache layout, from the graph), generation,
    chat_template and the special tokens."""
    from compress.generation import past_layout

    try:
        past = past_layout(inputs)
    except ValueError as e:
        raise StageError(f"{src / 'model.onnx'}: {e}") from None
    template, special = tokenizer_facts(src)
    return {"past": past, "generation": generation_settings(src), "chat_template": template,
            "special_tokens": special}


def build_decoder_package(model: ONNXModel, out: Path, name: str) -> dict:
    """Copy the graph, config, generation config and tokenizer files into `out` and write
    deploy.json (hashes included); returns the spec."""
    import shutil

    from compress.artifacts import copy_sidecar_files
    from compress.onnx_graph import onnx_precision
    from compress.stages.package.deploy import (
        deploy_spec,
        write_deploy_spec,
        write_fast_tokenizer,
    )

    copy_sidecar_files(model.path, out)  # config.json, generation_config.json and the tokenizer files
    write_fast_tokenizer(model.path, out)
    for f in model.path.glob("model.onnx*"):  # the graph and any external-data file
        shutil.copy2(f, out / f.name)
    spec = deploy_spec(name, "causal-lm", out / "model.onnx", None, 0, 0, onnx_precision(model.onnx_path), None)
    fields = decoder_fields(out, spec["inputs"])
    spec["max_sequence_length"] = fields["generation"]["max_positions"]
    spec["tokenizer"].update(pad_id=fields["generation"]["pad_token_id"], padding="left", truncation="none",
                             special_tokens=fields.pop("special_tokens"))
    spec.update(fields)
    write_deploy_spec(out, spec)
    return spec


def prompt_prefixes(texts: list[str], tokenizer_dir: Path, tokens: int) -> list[str]:
    """The first `tokens` tokens of each text, as text (cut at a token boundary)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = []
    for text in texts:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out.append(text[: offsets[min(tokens, len(offsets)) - 1][1]] if offsets else text)
    return [t for t in out if t.strip()]


def reference_greedy(model: ONNXModel, prompts: list[str], new_tokens: int, eos_ids: set[int],
                     threads: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, new token ids) per prompt: the training tokenizer and a plain greedy loop
    over an ONNX Runtime session of the graph, one prompt at a time, no padding."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(str(model.onnx_path), opts, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name: i for i in session.get_inputs()}
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    past = {n: i for n, i in graph_inputs.items() if n.startswith("past_key_values.")}
    outputs = [o.name for o in session.get_outputs()]
    all_prompt_ids, all_new = [], []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        feed_ids, cache, new = list(ids), {}, []
        for n, i in past.items():  # [batch, kv_heads, 0, head_dim]
            cache[n] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=dtypes[i.type])
        seen = 0
        while len(new) < new_tokens:
            feed = {"input_ids": np.array([feed_ids], dtype=np.int64),
                    "attention_mask": np.ones((1, seen + len(feed_ids)), dtype=np.int64), **cache}
            if "position_ids" in graph_inputs:
                feed["position_ids"] = np.arange(seen, seen + len(feed_ids), dtype=np.int64)[None]
            if LOGITS_TO_KEEP in graph_inputs:  # every position, as exported: the loop reads the last
                feed[LOGITS_TO_KEEP] = np.array(0, dtype=np.int64)
            result = dict(zip(outputs, session.run(outputs, feed)))
            seen += len(feed_ids)
            token = int(result["logits"][0, -1].argmax())
            new.append(token)
            if token in eos_ids:
                break
            cache = {n: result[n.replace("past_key_values.", "present.")] for n in past}
            feed_ids = [token]
        all_prompt_ids.append(ids)
        all_new.append(new)
    return all_prompt_ids, all_new


def validate_generation(package: Path, reference: ONNXModel, prompts: list[str], new_tokens: int,
                        threads: int) -> dict:
    """Greedy generation in the packaged runtime (compress.runtime.Predictor.generate, batch
    1) against reference_greedy on the input graph: the same prompt ids and new tokens, for
    every prompt. Raises StageError naming the first prompt that differs."""
    from compress.runtime import Predictor

    if not prompts:
        raise StageError("package validation: no eval text to make a prompt of")
    predictor = Predictor.load(package, threads=threads)
    ours = predictor.generate(prompts, max_new_tokens=new_tokens, batch_size=1)
    eos = set(generation_settings(reference.path)["eos_token_ids"])  # the input model's, not deploy.json's
    ref_prompts, ref_new = reference_greedy(reference, prompts, new_tokens, eos, threads)
    for i, (prompt, mine, ids, theirs) in enumerate(zip(prompts, ours, ref_prompts, ref_new)):
        if predictor.tokenizer.encode(prompt).ids != ids:
            raise StageError(f"package validation: {package / 'tokenizer.json'} tokenizes prompt {i} "
                             f"({prompt[:40]!r}…) differently from the training tokenizer")
        if mine["token_ids"] != theirs:
            at = next((k for k, (a, b) in enumerate(zip(mine["token_ids"], theirs)) if a != b),
                      min(len(mine["token_ids"]), len(theirs)))
            raise StageError(f"package validation: greedy generation of prompt {i} differs from the reference "
                             f"ONNX Runtime session at new token {at} ({mine['token_ids'][at:at + 3]} vs "
                             f"{theirs[at:at + 3]}); the packaged runtime must pick the same tokens on the same graph")
    return {"runtime": "compress.runtime (onnxruntime)", "provider": "CPUExecutionProvider",
            "reference": f"greedy loop over an onnxruntime session on {reference.onnx_path.name} with the "
                         "training tokenizer, batch 1",
            "examples": len(prompts), "new_tokens": sum(len(t) for t in ref_new), "max_new_tokens": new_tokens,
            "token_agreement": 1.0}

