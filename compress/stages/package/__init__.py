"""`package`: the run's final model as a self-contained directory another service can
load without the training stack (see compress.runtime), plus a Triton model
repository. Always the last stage; it validates the package before it succeeds."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from compress.artifacts import Artifact, ONNXModel, TRTEngine
from compress.stages.base import StageConfig


class PackageStage(StageConfig):
    kind: Literal["package"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
                             description="Model name in deploy.json and the Triton repository (default: the recipe name).")
    triton: bool = Field(True, description="Also write a Triton Inference Server model repository (triton/).")
    triton_max_batch_size: int = Field(32, ge=1, description="Triton max_batch_size for ONNX models (engines: "
                                                             "the largest profile max_batch).")
    validate_samples: int = Field(128, ge=1, description="Eval examples the packaged runtime is checked on.")
    atol: float = Field(1e-5, gt=0, description="Max |raw output difference| (logits) vs the reference ONNX Runtime "
                                                   "session fed the same batches.")
    validate_prompts: int = Field(4, ge=1, description="causal-lm: eval texts whose first 32 tokens are the prompts "
                                                       "of the validation generation.")
    validate_new_tokens: int = Field(16, ge=1, description="causal-lm: greedy tokens generated per validation prompt.")

    accepts = (ONNXModel, TRTEngine)
    produces = ONNXModel  # a TensorRT engine input gives a TRTEngine package (engine + its ONNX)
    final: ClassVar[bool] = True
    keeps_model: ClassVar[bool] = True  # the same graph (or engine) as its input, copied

    def run(self, model: Artifact, ctx) -> Artifact:
        import json
        import shutil

        from compress.artifacts import copy_sidecar_files
        from compress.onnx_graph import onnx_precision
        from compress.stages.package.deploy import (
            deploy_spec,
            engine_source_onnx,
            validate_package,
            write_deploy_spec,
            write_fast_tokenizer,
        )
        from compress.stages.package.triton_repository import write_triton_repository

        out = ctx.artifact_dir
        if ctx.recipe.task == "causal-lm":
            return self._run_decoder(model, ctx)
        engine = model if isinstance(model, TRTEngine) else None
        onnx_model = engine_source_onnx(engine, ctx.earlier) if engine else model
        name = self.name or ctx.recipe.name

        copy_sidecar_files(onnx_model.path, out)  # config.json and the tokenizer files
        pad_id = write_fast_tokenizer(onnx_model.path, out)
        # real copies from earlier stages (a hard link would let an edit here change their files)
        for f in onnx_model.path.glob("model.onnx*"):  # the graph and any external-data file
            shutil.copy2(f, out / f.name)
        metadata = None
        if engine:
            shutil.copy2(engine.engine_path, out / "model.engine")
            shutil.copy2(engine.path / "engine.json", out / "engine.json")
            metadata = json.loads((engine.path / "engine.json").read_text())
        precision = metadata["precision"] if metadata else onnx_precision(onnx_model.onnx_path)
        spec = deploy_spec(name, ctx.recipe.task, out / "model.onnx", ctx.splits.label_names,
                           ctx.recipe.data.max_length, pad_id, precision, metadata)
        if self.triton:
            kind = "trt" if engine else "onnx"
            max_batch = max(p["max_batch"] for p in metadata["profiles"]) if engine else self.triton_max_batch_size
            write_triton_repository(out / "triton", name, kind, out / ("model.engine" if engine else "model.onnx"),
                                    spec["inputs"], spec["outputs"], spec["labels"], max_batch)
        write_deploy_spec(out, spec)  # hashes every file so far; the runtime checks them on load

        samples = min(self.validate_samples, len(ctx.splits.eval))
        head = ctx.splits.eval.subset(list(range(samples)))
        spec["validated"].append(validate_package(
            out, onnx_model, ctx.task, *ctx.task.runtime_inputs(head), ctx.encoded_eval(onnx_model, samples),
            ctx.measure.threads, self.atol))
        if engine:  # build_engine compared the engine with this ONNX model on eval inputs
            parity = ctx.input_record.get("parity", {})
            spec["validated"].append({"runtime": f"tensorrt {metadata.get('tensorrt', '')}".strip(),
                                      "provider": metadata.get("gpu", "GPU"), **parity})
        _finish(out, spec, name, ctx)
        return TRTEngine(out) if engine else ONNXModel(out)

    def _run_decoder(self, model: Artifact, ctx) -> Artifact:
        """A causal LM's package: the graph with its KV cache, deploy.json with the cache layout and
        generation settings, checked by a greedy generation (stages/package/decoder.py)."""
        import logging

        from compress.errors import StageError
        from compress.stages.package.decoder import (
            TRITON_SKIPPED,
            build_decoder_package,
            prompt_prefixes,
            validate_generation,
        )

        if isinstance(model, TRTEngine):
            raise StageError("package: a causal-lm TensorRT engine cannot be packaged (the light runtime steps an "
                             "ONNX decoder graph with its KV cache)")
        out, name = ctx.artifact_dir, self.name or ctx.recipe.name
        spec = build_decoder_package(model, out, name)
        if self.triton:
            logging.getLogger(__name__).info("package: %s", TRITON_SKIPPED)

        texts = ctx.task.runtime_inputs(ctx.splits.eval.subset(list(range(min(self.validate_prompts,
                                                                               len(ctx.splits.eval))))))[0]
        prompts = prompt_prefixes(texts, model.path, 32)
        spec["validated"].append(validate_generation(out, model, prompts, self.validate_new_tokens,
                                                     ctx.measure.threads))
        _finish(out, spec, name, ctx, triton=TRITON_SKIPPED if self.triton else None)
        return ONNXModel(out)


def _finish(out, spec: dict, name: str, ctx, **record) -> None:
    """The last step of every package, once its files are in place and validated: the model
    card, deploy.json rewritten (hashes, validations), and the run's record; `record` adds
    fields to the package record."""
    from compress.environment import environment
    from compress.stages.package.deploy import CARD_FILE, model_card, write_deploy_spec

    env = environment()
    env["packages"].update(_runtime_versions())  # the card lists what the light runtime needs too
    (out / CARD_FILE).write_text(model_card(spec, ctx, env), encoding="utf-8")
    write_deploy_spec(out, spec)
    ctx.record(package={"name": name, "precision": spec["precision"], "files": len(spec["files"]),
                        "validated": spec["validated"], **record})
    if ctx.selection:  # the select block chose what this package ships
        ctx.record(selection=ctx.selection)


def _runtime_versions() -> dict:
    """Versions of what the light runtime needs (environment() lists the training stack)."""
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("tokenizers", "numpy")}
