"""Build a deployable package from a run's final model: the model files, a fast
tokenizer (tokenizer.json), deploy.json (I/O signature, labels, precision, hashes),
README.md (a Hugging Face model card: YAML metadata, then Markdown) and a Triton model
repository; then prove it works by loading it with the light runtime (compress.runtime)
and comparing against the reference session. The directory also loads with optimum's
ORTModelFor<Task>.from_pretrained and transformers' pipeline()."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from compress.artifacts import ONNXModel, TRTEngine
from compress.errors import StageError
from compress.files import file_sha256
from compress.runtime import DEPLOY_FILE, FORMAT, Predictor

log = logging.getLogger(__name__)

CARD_FILE = "README.md"  # the Hugging Face model card name
NOT_HASHED = {DEPLOY_FILE, "stage.json"}  # deploy.json cannot hash itself; stage.json is written after


# ---------------------------------------------------------------------------- files


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (the Triton copy of the model costs no
    disk), a copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_fast_tokenizer(src: Path, dst: Path) -> int:
    """Save the model's fast tokenizer (tokenizer.json is what the light runtime reads);
    returns the pad token id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, use_fast=True)
    if not tokenizer.is_fast:
        raise StageError(f"{src}: no fast tokenizer (tokenizer.json) can be made for {type(tokenizer).__name__}; "
                         "the light runtime needs one")
    tokenizer.save_pretrained(dst)
    return int(tokenizer.pad_token_id or 0)


def hash_files(package: Path) -> dict[str, str]:
    return {str(p.relative_to(package)): file_sha256(p) for p in sorted(package.rglob("*"))
            if p.is_file() and p.name not in NOT_HASHED}


# ---------------------------------------------------------------------------- ONNX facts


def onnx_signature(onnx_path: Path) -> tuple[list[dict], list[dict]]:
    """Graph inputs and outputs: name, numpy dtype name, shape with dynamic dims as
    their symbolic names (str) and static ones as ints."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(value) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        return {"name": value.name, "dtype": np.dtype(tensor_dtype_to_np_dtype(t.elem_type)).name, "shape": shape}

    inputs = [describe(v) for v in graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in graph.output]


# ---------------------------------------------------------------------------- TensorRT


def engine_source_onnx(engine: TRTEngine, earlier) -> ONNXModel:
    """The ONNX model an engine was built from: the earlier stage (`earlier`: the stage
    context's (entry, artifact) pairs) whose artifact hash engine.json records
    (build_engine stores it as onnx_sha256)."""
    metadata = json.loads((engine.path / "engine.json").read_text())
    wanted = metadata.get("onnx_sha256")
    for entry, artifact in reversed(earlier):
        if artifact is None or entry.artifact != "onnx":
            continue
        if (wanted is None or entry.artifact_sha256 == wanted) and artifact.onnx_path.is_file():
            return artifact
    raise StageError(f"{engine.path}: cannot find the ONNX model this engine was built from among the run's "
                     f"stages (engine.json onnx_sha256 {str(wanted)[:12]}…)")


# ---------------------------------------------------------------------------- validation


def validate_package(package: Path, reference: ONNXModel, task, texts: list[str], pairs: list[str] | None,
                     reference_features: list[dict], threads: int, atol: float, batch_size: int = 32) -> dict:
    """Load the package with the light runtime and require (1) the same features (token ids)
    as the training tokenizer and (2) the same task outputs (labels, tags, answer spans), and
    raw outputs within atol, as an ONNX Runtime session on the reference model fed the same
    batches. Raises StageError."""
    from compress.evaluate import predict_outputs
    from compress.parity import compare_outputs, describe_agreement
    from compress.sessions import ORTSession

    predictor = Predictor.load(package, threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eval texts longer than max length are expected here
        features = predictor.features(texts, pairs)
    if len(features) != len(reference_features):
        raise StageError(f"package validation: the packaged runtime makes {len(features)} features of "
                         f"{len(texts)} eval examples, the training tokenizer {len(reference_features)}")
    for i, (ours, ref) in enumerate(zip(features, reference_features)):
        for name, _ in predictor.inputs:
            if name in ref and list(ours[name]) != list(ref[name]):
                raise StageError(f"package validation: {package / 'tokenizer.json'} tokenizes eval example "
                                 f"{ours.get('example', i)} differently from the training tokenizer ({name})")
    ours = predictor.run(features, batch_size)
    theirs = predict_outputs(ORTSession(reference, threads), reference_features, batch_size, "package (reference)")
    compared = compare_outputs(theirs, ours, task, reference_features)
    result = {"runtime": "compress.runtime (onnxruntime)", "provider": "CPUExecutionProvider",
              "reference": f"onnxruntime session on {reference.onnx_path.name} with the training tokenizer",
              "examples": len(texts), **compared, "atol": atol}
    disagree = any(v < 1.0 for k, v in compared.items() if k.endswith("_agreement"))
    if disagree or compared["max_abs_diff"] > atol:
        raise StageError(f"package validation failed on {len(texts)} eval examples: {describe_agreement(compared)}, "
                         f"max |output difference| {compared['max_abs_diff']:.3g} (atol {atol:g})")
    return result


# ---------------------------------------------------------------------------- deploy.json and the card


def deploy_spec(name: str, task: str, onnx_path: Path, labels: list[str] | None, max_length: int, pad_id: int,
                precision: str, engine: dict | None) -> dict:
    inputs, outputs = onnx_signature(onnx_path)
    return {
        "format": FORMAT,
        "name": name,
        "task": task,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"onnx": onnx_path.name, **({"engine": "model.engine", "engine_metadata": "engine.json"}
                                             if engine else {})},
        "precision": precision,
        "inputs": inputs,
        "outputs": outputs,
        "labels": labels,
        "max_sequence_length": max_length,
        "tokenizer": {"file": "tokenizer.json", "pad_id": pad_id, "truncation": "longest_first, right"},
        "validated": [],
        "files": {},
    }


def write_deploy_spec(package: Path, spec: dict) -> None:
    spec["files"] = hash_files(package)
    (package / DEPLOY_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


# stage kind -> a Hub tag for what it did to the model
STAGE_TAGS = {"distill": "distillation", "prune": "pruned", "ptq": "quantized", "qat": "quantized",
              "build_engine": "tensorrt"}


def ort_class_name(task) -> str:
    """The optimum class that loads a package of `task`: the ORT twin of the task's head
    (AutoModelForSequenceClassification -> ORTModelForSequenceClassification)."""
    return "ORT" + task.head.removeprefix("Auto")


def _data_name(location: str) -> str:
    from compress.locations import builtin_name

    return builtin_name(location) or Path(location).name


def card_metadata(spec: dict, ctx) -> str:
    """The model card's YAML metadata (huggingface_hub's ModelCardData): base model, data,
    the package's metric values on the eval split (model-index), tags, pipeline tag, library."""
    from huggingface_hub import EvalResult, ModelCardData

    from compress.models import hub_id_of

    data = ctx.recipe.data
    datasets = list(dict.fromkeys(_data_name(x) for x in (data.train, data.eval) if x))
    record = ctx.input_record  # the packaged model's own measurement (the stage's input)
    names = [ctx.metric, *(m for m in ctx.task.metric_names if m != ctx.metric)]
    values = {m: float(record[m]) for m in names if isinstance(record.get(m), (int, float))}
    hub_task = "text-generation" if spec["task"] == "causal-lm" else spec["task"]  # the Hub's name for it
    results = [EvalResult(task_type=hub_task, dataset_type=datasets[0], dataset_name=datasets[0],
                          dataset_split="eval (held out)", metric_type=m, metric_name=m, metric_value=v)
               for m, v in values.items()]
    earlier = [e for e, _ in ctx.earlier]
    if ctx.selection:  # the packaged model went through the stages up to the chosen one only
        earlier = earlier[: [e.name for e in earlier].index(ctx.selection["chosen"]) + 1]
    kinds = [e.kind for e in earlier if e.status != "skipped"]
    tags = ["onnx", "onnxruntime", "compress", spec["precision"], *dict.fromkeys(
        STAGE_TAGS[k] for k in kinds if k in STAGE_TAGS)]
    meta = ModelCardData(model_name=spec["name"], base_model=hub_id_of(ctx.recipe.model), datasets=datasets,
                         metrics=list(values), tags=tags, pipeline_tag=hub_task, library_name="optimum",
                         eval_results=results or None)
    return meta.to_yaml()


def model_card(spec: dict, ctx, environment: dict) -> str:
    """README.md: Hugging Face model-card metadata, then what was done to the model, how it
    scored after each step, how fast it ran (when the run's benchmark ran before this stage),
    where it was checked and how to load it."""
    from compress.report import md_table, summary_table
    from compress.tasks import is_lower_better

    decoder = "generation" in spec  # a causal LM: generate(), positions, no Triton repository

    stages = [f"{i + 1}. `{e.kind}` ({e.status})" + (f": {e.reason}" if e.reason else "")
              + (f" `{json.dumps(e.config)}`" if e.config else "")
              for i, (e, _) in enumerate(ctx.earlier)]
    # perplexity changes read in % of the reference, not in points
    header, body = summary_table(list(ctx.ledger), ctx.metric, relative=is_lower_better(ctx.task, ctx.metric))
    io = [[f"`{t['name']}`", t["dtype"], str(t["shape"])] for t in spec["inputs"] + spec["outputs"]]
    validated = [[v["runtime"], v.get("provider", "-"), str(v.get("examples", "-")),
                  ", ".join(f"{k.removesuffix('_agreement')} {val}" for k, val in v.items()
                            if k.endswith("_agreement")) or "-",
                  f"{v['max_abs_diff']:.2g} (outputs)" if "max_abs_diff" in v else "- (tokens compared)"]
                 for v in spec["validated"]]
    parts = [
        f"---\n{card_metadata(spec, ctx)}\n---\n",
        f"# {spec['name']}\n",
        f"Task: {spec['task']}. " + (f"Labels: {', '.join(spec['labels'])}. " if spec["labels"] else "")
        + f"Precision: {spec['precision']}. "
        + (f"Positions: {spec['max_sequence_length']} (prompt and new tokens together).\n" if decoder else
           f"Max sequence length: {spec['max_sequence_length']} tokens (longer texts are truncated).\n"),
        f"Base model: `{ctx.recipe.model}`. Recipe: `{ctx.recipe_path}`.\n",
        "## Stages applied\n", "\n".join(stages) + "\n",
        f"## {ctx.metric.capitalize()} ledger (eval split)\n", md_table(header, body) + "\n",
    ]
    if ctx.selection:  # the select block chose the packaged model: the table that led to it
        from compress.select.pareto import selection_markdown

        parts += ["## Selection\n", selection_markdown(ctx.selection) + "\n"]
    if ctx.benchmark_markdown:  # the run's benchmark, when its recipe has a benchmark block
        parts += ["## Benchmark\n", ctx.benchmark_markdown.strip() + "\n"]
    ort_class = ort_class_name(ctx.task)
    call = ("predictor.generate([\"a prompt\"], max_new_tokens=64)  # [{'text', 'token_ids', 'finish_reason', ...}]"
            if decoder else f"predictor.predict({ctx.task.usage[0]})  # {ctx.task.usage[1]}")
    parts += [
        "## Inputs and outputs\n", md_table(["name", "dtype", "shape"], io) + "\n",
        "## Validated on\n",
        md_table(["runtime", "provider", "examples", "agreement", "max diff"], validated) + "\n",
        "## Environment\n", "```json\n" + json.dumps(environment, indent=2) + "\n```\n",
        "## Use\n",
        "```python\nfrom compress.runtime import Predictor\n\n"
        "predictor = Predictor.load(\"path/to/this/directory\")  # checks every file's sha256 first\n"
        f"{call}\n```\n\n"
        "or `compress predict path/to/this/directory \"some text\"`. With optimum and transformers:\n",
        f"```python\nfrom optimum.onnxruntime import {ort_class}\n"
        "from transformers import AutoTokenizer, pipeline\n\n"
        f"model = {ort_class}.from_pretrained(\"path/to/this/directory\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
        f"pipe = pipeline(\"{'text-generation' if decoder else spec['task']}\", model=model, "
        "tokenizer=tokenizer)\n```\n",
        "Needs only `onnxruntime`, `tokenizers` and `numpy`"
        + (" (and `jinja2` for chat=True, which renders the tokenizer's chat template). No Triton repository: "
           "a decoder's KV cache needs Triton's python or ensemble backend.\n" if decoder else
           ". `triton/` is a Triton Inference Server model repository (inputs are token ids: tokenize with "
           "tokenizer.json first).\n"),
    ]
    return "\n".join(parts)
