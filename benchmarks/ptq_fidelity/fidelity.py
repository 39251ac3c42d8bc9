"""Where dynamic INT8 loses fidelity on an encoder, and what brings it back: each variant of
ONNX Runtime's dynamic quantization (per-channel INT8 weights, per-tensor UINT8 activations
computed at run time) against the fp32 export, on the held-out split. Per variant: accuracy,
label agreement with fp32, and the mean / p99 absolute logit difference.

Variants: `none` (every MatMul/Gemm/Gather quantized), `keep:REGEX` (the matching nodes stay
fp32), `smooth:REGEX@ALPHA` (SmoothQuant-style: the matching MatMuls' input channels divided by
s = max|x|^alpha / max|w|^(1-alpha), measured on 256 training texts, by an explicit Mul, and
the weight rows multiplied by s: the fp32 function is unchanged, the activation's range is not).

    .venv/bin/python benchmarks/ptq_fidelity/fidelity.py \\
        benchmarks/.cache/runs/headline-ptq/01-export_onnx --out benchmarks/results/ptq-fidelity \\
        none 'keep:attn/[qkv]/' keep:attn/o/ keep:intermediate keep:output/dense ...

The headline teacher's export comes from `compress run recipes/headline-ptq.yaml` (its split:
seed 13, the 1,281 held-out snippets)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

SPLIT = dict(train="builtin:rotten-tomatoes", eval_fraction=0.1, seed=13, holdout="shuffled",
             max_train_samples=6000, max_length=64)


def logits(directory: Path, encoded: list[dict]) -> np.ndarray:
    from compress.bench.plan import ONNXFile
    from compress.evaluate import predict_outputs
    from compress.sessions import open_session

    return np.stack(predict_outputs(open_session(ONNXFile(directory, "model.onnx"), 2), encoded, 64))


def activation_maxima(model_path: Path, nodes: list, calib: list[dict], pad_id: int) -> dict[str, np.ndarray]:
    """Per input channel, the largest |activation| entering each node over the calibration text."""
    import onnx
    import onnxruntime as ort

    from compress.data import iter_batches

    probe = onnx.load(str(model_path))
    for node in nodes:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(probe, f"{tmp}/probe.onnx")
        session = ort.InferenceSession(f"{tmp}/probe.onnx", providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        maxima = {n.input[0]: 0.0 for n in nodes}
        for _, batch in iter_batches(calib, names, 32, pad_id):
            real = batch["attention_mask"].astype(bool)
            for node, out in zip(nodes, session.run([n.input[0] for n in nodes], batch)):
                maxima[node.input[0]] = np.maximum(maxima[node.input[0]], np.abs(out[real]).max(0))
    return maxima


def smooth_matmuls(model, pattern: str, maxima: dict[str, np.ndarray], alpha: float) -> int:
    """Scale the input channels of the MatMuls whose name matches (constant weight, activation
    maxima known) in place: x / s through an explicit Mul, weight rows * s. Returns how many."""
    import onnx
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMul" and re.search(pattern, n.name)
             and n.input[1] in weights and n.input[0] in maxima]
    for node in nodes:
        w = numpy_helper.to_array(weights[node.input[1]])
        s = np.clip(maxima[node.input[0]] ** alpha / np.maximum(np.abs(w).max(1), 1e-8) ** (1 - alpha), 1e-5, None)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
        scale = node.name + "/smooth_scale"
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale))
        mul = onnx.helper.make_node("Mul", [node.input[0], scale], [node.name + "/smoothed"], name=node.name + "/smooth")
        node.input[0] = mul.output[0]
        model.graph.node.insert(list(model.graph.node).index(node), mul)
    return len(nodes)


def smoothed(model_path: Path, pattern: str, alpha: float, calib: list[dict], pad_id: int):
    import onnx

    model = onnx.load(str(model_path))
    weights = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMul" and re.search(pattern, n.name)
             and n.input[1] in weights]
    touched = smooth_matmuls(model, pattern, activation_maxima(model_path, nodes, calib, pad_id), alpha)
    return model, touched


def quantize_variant(src: Path, variant: str, out: Path, calib: list[dict], pad_id: int) -> int:
    """Write the variant's INT8 model.onnx (and the tokenizer files) into out; returns how many nodes it touched."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compress.artifacts import copy_sidecar_files

    source, keep, touched = src / "model.onnx", [], 0
    if variant.startswith("keep:"):
        graph = onnx.load(str(source), load_external_data=False).graph
        keep = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Gather") and re.search(variant[5:], n.name)]
        touched = len(keep)
    elif variant.startswith("smooth:"):
        pattern, alpha = variant[7:].rsplit("@", 1)
        model, touched = smoothed(source, pattern, float(alpha), calib, pad_id)
        source = out / "fp32-smoothed.onnx"
        onnx.save(model, str(source))
    quantize_dynamic(str(source), str(out / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})
    copy_sidecar_files(src, out)
    return touched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="directory with the fp32 model.onnx and its tokenizer")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep-models", type=Path, help="write each variant's model here (for a bench spec) instead of a temporary folder")
    args = parser.parse_args()
    from compress.data import DataSpec, load_splits
    from compress.models import load_tokenizer
    from compress.tasks import get_task

    task = get_task("text-classification")
    splits = load_splits(DataSpec.model_validate(SPLIT), task.name)
    references = np.array(task.references(splits.eval))
    tokenizer = load_tokenizer(args.export)
    encoded = task.encode(tokenizer, splits.eval, SPLIT["max_length"])
    calib = task.encode(tokenizer, splits.train.subset(list(range(256))), SPLIT["max_length"])
    fp32 = logits(args.export, encoded)
    rows = [{"variant": "fp32", "accuracy": round(float((fp32.argmax(-1) == references).mean()), 4)}]
    for variant in args.variants:
        work = args.keep_models / re.sub(r"[^A-Za-z0-9@.]+", "-", variant.replace("\\.", "")).strip("-") if args.keep_models else Path(tempfile.mkdtemp())
        work.mkdir(parents=True, exist_ok=True)
        try:
            touched = quantize_variant(args.export, variant, work, calib, tokenizer.pad_token_id)
            int8 = logits(work, encoded)
        finally:
            if not args.keep_models:
                shutil.rmtree(work)
        diff = np.abs(int8 - fp32)
        rows.append({"variant": variant, "nodes": touched,
                     "accuracy": round(float((int8.argmax(-1) == references).mean()), 4),
                     "agreement": round(float((int8.argmax(-1) == fp32.argmax(-1)).mean()), 4),
                     "mean_abs_logit_diff": round(float(diff.mean()), 4),
                     "p99_abs_logit_diff": round(float(np.quantile(diff, 0.99)), 4)})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/ptq_fidelity/fidelity.py " + " ".join(
                  [str(args.export)] + [f"'{v}'" for v in args.variants] + ["--out", str(args.out)]),
              "examples": len(references), "calibration_texts": len(calib), "rows": rows}
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| variant | nodes | accuracy | agreement with fp32 | mean abs logit diff | p99 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r.get('nodes', '')} | {r['accuracy']:.4f} | {r.get('agreement', 1):.4f} | "
              f"{r.get('mean_abs_logit_diff', 0):.4f} | {r.get('p99_abs_logit_diff', 0):.4f} |" for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
