"""The distill stage on the tiny 2-layer classifier: students by layer subset and by smaller
configuration, every loss term, teacher caching, teachers from earlier stages, bad configs."""

from __future__ import annotations

import re

import pytest

from compress.errors import RecipeError
from compress.models import load_model
from tests.conftest import tiny_recipe_text
from tests.helpers import recipe_error, run_tiny, stage_json

TRAIN = """
    max_steps: 15
    batch_size: 8
    learning_rate: 3.0e-3
    warmup_ratio: 0.0
"""


def test_layer_subset_student_lowers_the_distillation_loss(tmp_path, tiny_classifier_dir):
    # The tiny teacher is random: its soft targets are near uniform and the student starts at
    # them, so what the loss can lose is the label part, which needs more than 15 steps to
    # move beyond the data order's noise (5 epochs of the 72 train rows).
    run_dir = run_tiny(tmp_path, tiny_classifier_dir,
                       "\n  - kind: distill\n    every: 2\n" + TRAIN.replace("max_steps: 15", "max_steps: 45"))
    record = stage_json(run_dir, "01-distill")
    assert record["student"]["structure"]["layers"] == 1 and record["student"]["layer_map"] == [1]
    assert record["teacher"]["structure"]["layers"] == 2
    loss = record["distillation_loss"]
    assert loss["after"] < loss["before"], loss
    assert set(loss["parts_final"]) == {"soft_target", "label"}
    # before/after: the input's measurements beside the student's own
    assert record["input"]["parameters"] > record["parameters"]
    assert record["input"]["accuracy"] is not None and record["latency"]["p50_ms"] > 0
    student = load_model(run_dir / "01-distill")
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1


def test_smaller_config_student_with_hidden_and_attention_losses(tmp_path, tiny_classifier_dir):
    stages = """
  - kind: distill
    student: {hidden_size: 16, num_heads: 2, intermediate_size: 32, num_layers: 1}
    distillation: {hidden_weight: 1.0, attention_weight: 1.0}
""" + TRAIN
    record = stage_json(run_tiny(tmp_path, tiny_classifier_dir, stages), "01-distill")
    assert record["student"]["structure"] == {"layers": 1, "hidden_size": 16, "heads_per_layer": [2],
                                              "ffn_per_layer": [32]}
    assert record["student"]["projections"] is True  # 16 → 32 wide: learned projection
    assert set(record["distillation_loss"]["parts_final"]) == {"soft_target", "label", "hidden", "attention"}
    assert record["distillation_loss"]["after"] < record["distillation_loss"]["before"]


def test_cached_teacher_logits_are_used_instead_of_the_teacher():
    import torch

    from compress.distillation import DistillationObjective, teacher_outputs

    class Exploding(torch.nn.Module):
        def forward(self, **kw):
            raise AssertionError("the teacher ran although its logits were cached")

    cached = torch.randn(4, 2)
    batch = {"input_ids": torch.ones(4, 3, dtype=torch.long), "teacher_logits": cached}
    from compress.tasks import get_task

    task = get_task("text-classification")
    assert teacher_outputs(Exploding(), batch, DistillationObjective(), task)[0] is cached
    with pytest.raises(AssertionError):  # hidden states are never cached: the teacher must run
        teacher_outputs(Exploding(), batch, DistillationObjective(hidden_weight=1.0), task)
    # labels only: no teacher at all
    assert teacher_outputs(None, batch, DistillationObjective(soft_target_weight=0, label_weight=1), task) == (None,) * 3


def test_cache_teacher_trains_like_the_uncached_run(tmp_path, tiny_classifier_dir):
    plain = stage_json(run_tiny(tmp_path / "a", tiny_classifier_dir, "\n  - kind: distill\n    every: 2\n" + TRAIN),
                       "01-distill")
    cached = stage_json(run_tiny(tmp_path / "b", tiny_classifier_dir,
                                 "\n  - kind: distill\n    every: 2\n    cache_teacher: true\n" + TRAIN), "01-distill")
    assert cached["cached_teacher_logits"] is True
    # the teacher is in eval mode either way: cached and live logits are the same numbers
    assert cached["distillation_loss"]["before"] == pytest.approx(plain["distillation_loss"]["before"], rel=1e-4)
    assert cached["training"]["final_loss"] == pytest.approx(plain["training"]["final_loss"], rel=1e-3)


def test_teacher_from_an_earlier_stage_distils_into_the_incoming_model(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: distill\n    keep_layers: [0]\n" + TRAIN + "\n  - kind: distill\n    teacher: stage:0\n"
    with pytest.raises(RecipeError, match=r"teacher 'stage:0' names no earlier stage"):
        run_tiny(tmp_path / "bad", tiny_classifier_dir, stages)
    # the second distill: student = the 1-layer output of stage 1, teacher = the 2-layer input of it
    stages = ("\n  - kind: finetune\n    max_steps: 2\n    batch_size: 8\n"
              "\n  - kind: distill\n    keep_layers: [0]\n" + TRAIN
              + "\n  - kind: distill\n    teacher: stage:finetune\n" + TRAIN)
    run_dir = run_tiny(tmp_path / "ok", tiny_classifier_dir, stages)
    record = stage_json(run_dir, "03-distill")
    assert record["teacher"]["path"] == str(run_dir / "01-finetune")
    assert record["teacher"]["structure"]["layers"] == 2 and record["student"]["structure"]["layers"] == 1
    assert record["student"]["layer_map"] == [1]  # 1 student layer imitates the teacher's last


BAD = {
    "two student choices": ("every: 2\n    keep_layers: [0]",
                            r"stages\[0\]: distill: choose one way to build the student, not keep_layers and every"),
    "no student": ("distillation: {temperature: 2}", r"stages\[0\]: distill: the student would equal the teacher"),
    "unsorted layers": ("keep_layers: [2, 0]", r"stages\[0\]\.keep_layers: keep_layers must be distinct .*\[2, 0\]"),
    "negative layer": ("keep_layers: [-1]", r"stages\[0\]\.keep_layers: keep_layers must be distinct"),
    "every 1": ("every: 1", r"stages\[0\]\.every: Input should be greater than or equal to 2"),
    "zero temperature": ("every: 2\n    distillation: {temperature: 0}",
                         r"stages\[0\]\.distillation\.temperature: Input should be greater than 0"),
    "all weights zero": ("every: 2\n    distillation: {soft_target_weight: 0, label_weight: 0}",
                         r"stages\[0\]\.distillation: every loss weight is 0 \(soft_target_weight, label_weight, "),
    "cache with hidden": ("every: 2\n    cache_teacher: true\n    distillation: {hidden_weight: 1}",
                          r"stages\[0\]: distill: cache_teacher caches logits only; distillation\.hidden_weight"),
    "objective typo": ("every: 2\n    distillation: {temprature: 4}",
                       r"stages\[0\]\.distillation\.temprature: unknown field \(did you mean 'temperature'\?\)"),
    "kl_weight": ("every: 2\n    kl_weight: 1",
                  r"stages\[0\]: distill: kl_weight is renamed to distillation\.soft_target_weight$"),
    "ce_weight": ("every: 2\n    ce_weight: 1",
                  r"stages\[0\]: distill: ce_weight is renamed to distillation\.label_weight$"),
    "temperature": ("every: 2\n    temperature: 3",
                    r"stages\[0\]: distill: temperature is renamed to distillation\.temperature$"),
    "hidden_weight": ("every: 2\n    hidden_weight: 1",
                      r"stages\[0\]: distill: hidden_weight is renamed to distillation\.hidden_weight$"),
    "attention_weight": ("every: 2\n    attention_weight: 1",
                         r"stages\[0\]: distill: attention_weight is renamed to distillation\.attention_weight$"),
    "heads do not divide": ("student: {hidden_size: 30, num_heads: 4}",
                            r"stages\[0\]\.student: .*hidden_size 30 must be a multiple of student\.num_heads 4"),
    "empty student": ("student: {}", r"stages\[0\]\.student: student: set at least one of"),
    "student typo": ("student: {hidden: 16}", r"stages\[0\]\.student\.hidden: unknown field \(did you mean 'hidden_size'\?\)"),
    "teacher is onnx": ("teacher: stage:1\n  - kind: export_onnx\n  - kind: distill\n    teacher: stage:export_onnx",
                        r"stages\[2\] \(distill\): teacher 'stage:export_onnx' is an ONNX model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_distill_config_is_one_line_naming_the_field(recipe_dir, case):
    body, pattern = BAD[case]
    if case == "teacher is onnx":  # a valid first distill, then export, then a distill taught by the ONNX model
        text = tiny_recipe_text(stages="\n  - kind: finetune\n  - kind: distill\n    every: 2\n  - kind: export_onnx\n"
                                       "  - kind: distill\n    teacher: stage:export_onnx\n")
        pattern = r"stages\[3\] \(distill\): teacher 'stage:export_onnx' is an ONNX model"
    else:
        text = tiny_recipe_text(stages=f"\n  - kind: distill\n    {body}\n")
    message = recipe_error(recipe_dir, text)
    assert re.search(pattern, message), message


def test_distill_runs_in_two_cpu_processes(tmp_path, tiny_classifier_dir):
    """torchrun with 2 ranks on gloo: the stage completes, both ranks train the same 1-layer
    student (gradients are all-reduced), and rank 0 alone writes it."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import make_sentences, write_csv

    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    (tmp_path / "recipe.yaml").write_text(tiny_recipe_text(model=str(tiny_classifier_dir), stages="""
  - kind: distill
    keep_layers: [1]
    max_steps: 4
    batch_size: 8
    learning_rate: 1.0e-3
"""))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(root / "tests" / "stages" / "distill_worker.py"),
           str(tmp_path / "recipe.yaml"), str(tiny_classifier_dir), str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["info"]["training"]["processes"] == 2 and r["info"]["training"]["steps"] == 4
        assert r["info"]["student"]["structure"]["layers"] == 1
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6)  # kept in sync
    student = load_model(tmp_path / "out" / "student")
    assert student.config.num_hidden_layers == 1


def test_a_changed_teacher_checkpoint_reruns_the_stage(tmp_path, tiny_classifier_dir):
    import shutil

    import torch

    from tests.helpers import manifest

    shutil.copytree(tiny_classifier_dir, tmp_path / "teacher")
    stages = "\n  - kind: distill\n    teacher: teacher\n    keep_layers: [0]\n    max_steps: 2\n    batch_size: 8\n"
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, stages)
    assert stage_json(run_dir, "01-distill")["teacher"]["path"] == str(tmp_path / "teacher")
    run_tiny(tmp_path, tiny_classifier_dir, stages)
    assert manifest(run_dir)["stages"][0]["status"] == "reused"
    teacher = load_model(tmp_path / "teacher")
    with torch.no_grad():
        teacher.classifier.weight.mul_(-1)
    teacher.save_pretrained(tmp_path / "teacher")
    run_tiny(tmp_path, tiny_classifier_dir, stages)
    assert manifest(run_dir)["stages"][0]["status"] == "completed"  # not reused: the teacher changed


def test_an_mpnet_student_rewritten_as_bert_distils_and_exports(tmp_path, tiny_mpnet_dir):
    stages = """
  - kind: distill
    every: 2
    student_architecture: bert
    distillation: {hidden_weight: 1.0, attention_weight: 1.0}
""" + TRAIN + """
  - kind: export_onnx
"""
    run_dir = run_tiny(tmp_path, tiny_mpnet_dir, stages)
    record = stage_json(run_dir, "01-distill")
    assert record["student"]["layer_map"] == [1, 3]
    assert set(record["distillation_loss"]["parts_final"]) == {"soft_target", "label", "hidden", "attention"}
    student = load_model(run_dir / "01-distill")
    assert type(student).__name__ == "BertForSequenceClassification" and student.config.num_hidden_layers == 2
    assert (run_dir / "02-export_onnx" / "model.onnx").is_file()


def test_the_bert_rewrite_needs_an_mpnet_model(tmp_path, tiny_classifier_dir):
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="student_architecture: bert: .*MPNetForSequenceClassification"):
        run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: distill\n    every: 2\n    student_architecture: bert\n"
                 + TRAIN)
