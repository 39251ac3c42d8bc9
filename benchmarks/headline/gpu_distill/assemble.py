"""Turns a student that distill_gpu.py sent back (its trained tensors in fp16 files) into a
checkpoint directory compress takes as a recipe's `model:`: the BERT configuration, the
weights in fp32 with the frozen word embeddings taken from the packed teacher (exactly the
values the student trained with), and the teacher's tokenizer.

    .venv/bin/python benchmarks/headline/gpu_distill/assemble.py FROM_DIR NAME OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from pack import unpack_state

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PARTS = ROOT / "benchmarks/.cache/gpu_distill"


def main() -> None:
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the folder distill_gpu.py wrote the student's files to")
    parser.add_argument("name", help="the student's name (distill_gpu.STUDENTS)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--parts", type=Path, default=PARTS)
    args = parser.parse_args()

    fields = json.loads((args.source / f"{args.name}.config.json").read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    state = {}
    for f in sorted(args.source.glob(f"{args.name}.[0-9]*.pt")):
        state.update({k: v.float() for k, v in torch.load(f, weights_only=True).items()})
    if config.model_type == "bert" and config.type_vocab_size == 1:
        # students trained before compress.bert_student gave BERT a second token type: optimum's
        # ONNX export feeds types 0 and 1, so add the (never used, zero) second row
        config.type_vocab_size = 2
        types = state["bert.embeddings.token_type_embeddings.weight"]
        state["bert.embeddings.token_type_embeddings.weight"] = torch.cat([types, torch.zeros_like(types)])
    student = AutoModelForSequenceClassification.from_config(config)
    teacher_part = unpack_state(torch.load(args.parts / "teacher_part1.pt", weights_only=True))
    state[f"{student.base_model_prefix}.embeddings.word_embeddings.weight"] = \
        teacher_part["mpnet.embeddings.word_embeddings.weight"]
    student.load_state_dict(state, strict=True)
    args.out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(args.out)
    teacher = json.loads((args.parts / "meta.json").read_text())["teacher"]
    tokenizer = AutoTokenizer.from_pretrained(ROOT / teacher)
    tokenizer.save_pretrained(args.out)
    for extra in ("report.json", "log.txt"):
        if (args.source / extra).is_file():
            shutil.copy(args.source / extra, args.out / f"distill_gpu_{extra}")
    print(f"{args.out}: {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
