"""Packs what distill_gpu.py needs on a GPU machine that holds no copy of the teacher and
reaches no network: the teacher's weights (weight-only INT8, one scale per output row, in two
parts that each fit one transfer) and the headline split, tokenized.

The GPU script's teacher is therefore this INT8 copy, not the fp32 checkpoint: this script
measures, on the held-out split, how far the copy is from the fp32 teacher (accuracy and
label agreement) and records it in meta.json, so the student's teacher is a measured one.

    .venv/bin/python benchmarks/headline/gpu_distill/pack.py   # → benchmarks/.cache/gpu_distill/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
TEACHER = ROOT / "benchmarks/.cache/runs/teacher-mpnet/01-finetune"
OUT = ROOT / "benchmarks/.cache/gpu_distill"
# The headline split (recipes/headline-full.yaml): every training snippet, the same 1,281 held out.
DATA = {"train": "builtin:rotten-tomatoes", "eval_fraction": 0.1, "seed": 13, "holdout": "shuffled", "max_length": 64}
FIRST_PART_LAYERS = 4  # part 1: embeddings + layers 0-3 (~52 MB); part 2: layers 4-11 + head (~57 MB)


def quantize_rows(weight: torch.Tensor) -> dict:
    """Symmetric INT8 with one fp32 scale per row (a Linear's output channel, an embedding's token)."""
    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    return {"q": torch.round(weight / scale).to(torch.int8), "scale": scale.float()}


def dequantize(packed: dict) -> torch.Tensor:
    return packed["q"].float() * packed["scale"]


def pack_state(state: dict) -> dict:
    return {name: quantize_rows(t) if t.dim() == 2 and min(t.shape) > 32 else {"raw": t.float()}
            for name, t in state.items()}


def unpack_state(packed: dict) -> dict:
    return {name: p["raw"] if "raw" in p else dequantize(p) for name, p in packed.items()}


def part_of(name: str) -> int:
    if name.startswith("mpnet.encoder.layer."):
        return 1 if int(name.split(".")[3]) < FIRST_PART_LAYERS else 2
    return 1 if name.startswith("mpnet.embeddings.") else 2


def tokenized(tokenizer, ds, max_length: int) -> dict:
    enc = tokenizer(ds.texts, truncation=True, max_length=max_length)
    return {"input_ids": [list(map(int, ids)) for ids in enc["input_ids"]], "labels": list(map(int, ds.labels))}


def accuracy_and_logits(model, examples: dict, pad_id: int, batch_size: int = 64):
    logits = []
    with torch.no_grad():
        for start in range(0, len(examples["input_ids"]), batch_size):
            rows = examples["input_ids"][start : start + batch_size]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
            logits.append(model(input_ids=ids, attention_mask=mask).logits)
    logits = torch.cat(logits)
    acc = (logits.argmax(-1) == torch.tensor(examples["labels"])).float().mean().item()
    return acc, logits


def main() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compress.data import DataSpec, load_splits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
    splits = load_splits(DataSpec(**DATA))
    data = {"train": tokenized(tokenizer, splits.train, DATA["max_length"]),
            "eval": tokenized(tokenizer, splits.eval, DATA["max_length"])}
    packed = pack_state(teacher.state_dict())
    for part in (1, 2):
        torch.save({n: p for n, p in packed.items() if part_of(n) == part}, args.out / f"teacher_part{part}.pt")
    torch.save(data, args.out / "data.pt")

    # How far the INT8 copy is from the fp32 teacher, on the held-out split.
    acc_fp32, logits_fp32 = accuracy_and_logits(teacher, data["eval"], tokenizer.pad_token_id)
    teacher.load_state_dict(unpack_state(packed))
    acc_int8, logits_int8 = accuracy_and_logits(teacher, data["eval"], tokenizer.pad_token_id)
    meta = {
        "teacher": str(args.teacher.relative_to(ROOT)) if args.teacher.is_relative_to(ROOT) else str(args.teacher),
        "config": teacher.config.to_dict(),
        "special_ids": {"pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id,
                        "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id},
        "data": DATA, "split": splits.record,
        "teacher_copy": {"weights": "INT8, symmetric, one scale per row (2-D tensors wider than 32); rest fp32",
                         "eval_accuracy_fp32": round(acc_fp32, 4), "eval_accuracy_int8_copy": round(acc_int8, 4),
                         "label_agreement": round((logits_fp32.argmax(-1) == logits_int8.argmax(-1)).float()
                                                  .mean().item(), 4),
                         "max_abs_logit_difference": round((logits_fp32 - logits_int8).abs().max().item(), 4)},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["teacher_copy"], indent=2))
    for f in sorted(args.out.iterdir()):
        print(f"{f.name}: {f.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
