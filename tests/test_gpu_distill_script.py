"""benchmarks/headline/gpu_distill: the teacher's INT8 packing round-trips within half a
quantization step, and distill_gpu.py trains, saves and assemble.py rebuilds a student from a
tiny packed teacher on the CPU (the GPU run is the same code on a larger teacher)."""

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "headline" / "gpu_distill"
sys.path.insert(0, str(HERE))

import assemble  # noqa: E402
import distill_gpu  # noqa: E402
import pack  # noqa: E402


def test_int8_rows_round_trip_within_half_a_step():
    w = torch.randn(40, 48) * torch.linspace(0.1, 3, 40)[:, None]
    packed = pack.quantize_rows(w)
    assert packed["q"].dtype == torch.int8
    assert ((pack.dequantize(packed) - w).abs() <= packed["scale"] / 2 + 1e-7).all()


def test_augmented_text_keeps_its_frame_and_uses_known_tokens():
    import numpy as np

    train = [[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 12, 2]]
    augment = distill_gpu.Augmenter(train, {"mask": 99}, np.random.default_rng(0))
    known = {5, 6, 7, 8, 9, 10, 11, 12, 99}
    for _ in range(50):
        new = augment(train[0])
        assert new[0] == 0 and new[-1] == 2 and 2 <= len(new) - 2 <= 5
        assert set(new[1:-1]) <= known


@pytest.mark.parametrize("student", ["bert-tiny", "mpnet-tiny"])
def test_distil_save_and_assemble_a_student(tmp_path, monkeypatch, student):
    from transformers import (
        AutoModelForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
        MPNetTokenizerFast,
    )

    words = ["good", "bad", "film", "plot", "dull", "great"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"]) + "\n")
    tokenizer = MPNetTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=40, max_position_embeddings=40, num_labels=2)
    teacher_dir = tmp_path / "teacher"
    MPNetForSequenceClassification(config).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)

    parts = tmp_path / "parts"
    parts.mkdir()
    teacher = MPNetForSequenceClassification.from_pretrained(teacher_dir)
    packed = pack.pack_state(teacher.state_dict())
    for part in (1, 2):
        torch.save({n: p for n, p in packed.items() if pack.part_of(n) == part}, parts / f"teacher_part{part}.pt")
    texts = [" ".join(words[(i + j) % 6] for j in range(1 + i % 5)) for i in range(24)]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    labels = [i % 2 for i in range(24)]
    torch.save({"train": {"input_ids": rows, "labels": labels}, "eval": {"input_ids": rows[:8], "labels": labels[:8]}},
               parts / "data.pt")
    meta = {"teacher": str(teacher_dir), "config": teacher.config.to_dict(), "teacher_copy": {},
            "special_ids": {"pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id}}
    (parts / "meta.json").write_text(json.dumps(meta))

    monkeypatch.setattr(distill_gpu, "STUDENTS", {student: ([1, 3], 16)})
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["distill_gpu.py", "--parts", str(parts), "--out", str(out), "--seconds", "60",
                                      "--max-epochs", "2", "--batch-size", "4"])
    distill_gpu.main()
    report = json.loads((out / "report.json").read_text())
    (record,) = report["students"]
    assert record["steps"] == 2 * (24 // 4) and len(record["epochs"]) == 2
    assert all(k in record["epochs"][-1] for k in ("soft_target", "label", "hidden", "attention"))

    built = tmp_path / "student"
    monkeypatch.setattr(sys, "argv", ["assemble.py", str(out), student, str(built), "--parts", str(parts)])
    assemble.main()
    model = AutoModelForSequenceClassification.from_pretrained(built)
    assert type(model).__name__ == ("BertForSequenceClassification" if student.startswith("bert")
                                    else "MPNetForSequenceClassification")
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 16
    # the frozen word embeddings are the packed teacher's, the trained tensors the ones sent back
    torch.testing.assert_close(model.base_model.embeddings.word_embeddings.weight,
                               teacher.mpnet.embeddings.word_embeddings.weight)
    sent = {}
    for f in sorted(out.glob(f"{student}.[0-9]*.pt")):
        sent.update(torch.load(f, weights_only=True))
    name = next(k for k in sent if k.endswith("layer.1.output.dense.weight"))
    torch.testing.assert_close(model.state_dict()[name], sent[name].float())
