"""The speed side of the student sweep for the full chain's target (>= 15x the teacher's batch-1
p50 on torch fp32 eager): students of the headline teacher in several depths and FFN widths,
untrained (initialised from the teacher's tensors by compress's own student_from_config), each
through the CPU chain a trained student takes (export, fusion, dynamic INT8 per channel), so
that one `compress bench` run says which shapes are fast enough before any GPU time is spent
on training them. Their accuracy means nothing: only their latency does.

    .venv/bin/python benchmarks/headline/shapes/make_shapes.py [NAME ...]   # default: every shape
    compress bench benchmarks/headline/shapes/bench.yaml --out benchmarks/results/headline/shapes
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks/.cache"
TEACHER = CACHE / "runs/teacher-mpnet/01-finetune"
SHAPES = {  # name: (layers, FFN neurons per layer, heads per layer: 12, or fewer as prune leaves MPNet)
    "mpnet4-ffn3072": (4, 3072, 12),
    "mpnet5-ffn3072": (5, 3072, 12),
    "mpnet6-ffn3072": (6, 3072, 12),
    "mpnet6-ffn1536": (6, 1536, 12),
    "mpnet8-ffn1536": (8, 1536, 12),
    # heads removed as the prune stage removes them (each layer keeps its heads' position bias)
    "mpnet6-ffn1536-h6": (6, 1536, 6),
    "mpnet8-ffn1536-h6": (8, 1536, 6),
    "mpnet10-ffn768-h6": (10, 768, 6),
    "mpnet12-ffn768-h6": (12, 768, 6),
}
CHAIN = """name: shape-{name}
model: {model}
task: text-classification
data:                       # the teacher's split (only its eval side is read: nothing trains)
  train: builtin:rotten-tomatoes
  eval_fraction: 0.1
  seed: 13
  holdout: shuffled
  max_train_samples: 6000
  max_length: 64
stages:
  - kind: export_onnx
    atol: 1.0e-4
  - kind: optimize_onnx
  - kind: ptq
    mode: dynamic
    per_channel: true
measure:
  threads: 2
  latency_iterations: 30
"""


def main(names: list[str]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compress.blocks import layout_of
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe
    from compress.stages.distill.student import student_from_config

    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER).eval()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    for name in names or SHAPES:
        layers, ffn, heads = SHAPES[name]
        model_dir = CACHE / "shapes" / name
        if not (model_dir / "config.json").is_file():
            student, _ = student_from_config(teacher, None, layers, None, ffn)
            if heads < student.config.num_attention_heads:
                layout_of(student).remove_heads_({i: list(range(heads, student.config.num_attention_heads))
                                                  for i in range(layers)})
            student.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        recipe = CACHE / "shapes" / f"{name}.yaml"
        recipe.write_text(CHAIN.format(name=name, model=model_dir))
        run_recipe(load_recipe(recipe), CACHE / "runs", recipe_path=recipe)


if __name__ == "__main__":
    main(sys.argv[1:])
