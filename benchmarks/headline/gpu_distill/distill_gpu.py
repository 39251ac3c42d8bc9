"""Task-specific distillation of the headline teacher (MPNet-base, 12 layers) into small BERT
students on one GPU: the objective of compress's distill stage with hidden states and
attention maps (teacher on every step), plus a transfer set grown TinyBERT-style, the
teacher labelling every augmented text. Standalone on purpose: the GPU machine has torch and
transformers but none of compress's other dependencies; it imports only compress.bert_student.

The student is the teacher's layers `layer_map` rewritten as BERT (compress.bert_student:
ONNX Runtime fuses BERT attention, not MPNet's), its FFN cut to `ffn` neurons per layer by
the teacher's own activation statistics; word embeddings stay frozen (the teacher's), so only
the trained tensors travel back.

    python benchmarks/headline/gpu_distill/distill_gpu.py --parts DIR --out DIR [--seconds 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pack import unpack_state  # beside this script

STUDENTS = {  # name: (teacher layers the student's layers start from and imitate, FFN neurons per layer)
    "bert4-ffn1536": ([2, 5, 8, 11], 1536),
    "bert4-ffn3072": ([2, 5, 8, 11], 3072),
    "bert6-ffn1536": ([1, 3, 5, 7, 9, 11], 1536),
    "mpnet4-ffn3072": ([2, 5, 8, 11], 3072),  # the teacher's own architecture: what the BERT rewrite costs
    # deeper MPNet students for the full chain's 1-point bound (the 4-layer one plateaued at -1.5 points);
    # their layers are compress's own spread (compress.stages.distill.student.spread_layers)
    "mpnet5-ffn3072": ([1, 4, 6, 9, 11], 3072),
    "mpnet6-ffn3072": ([1, 3, 5, 7, 9, 11], 3072),
    # the shape benchmarks/results/headline/shapes/ measured within the speed bounds with 6 layers (16.8x)
    "mpnet6-ffn1536": ([1, 3, 5, 7, 9, 11], 1536),
}


# ---------------------------------------------------------------------------- teacher and data


def load_teacher(parts: Path, device):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    meta = json.loads((parts / "meta.json").read_text())
    config = MPNetConfig.from_dict(meta["config"])
    teacher = MPNetForSequenceClassification(config)
    state = {}
    for part in (1, 2):
        state.update(unpack_state(torch.load(parts / f"teacher_part{part}.pt", weights_only=True)))
    teacher.load_state_dict(state, strict=True)
    return teacher.to(device).eval().requires_grad_(False), meta


def pad(rows: list[list[int]], pad_id: int, device):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


class Augmenter:
    """New text for the transfer set (Tang et al. 2019, TinyBERT): a random contiguous span
    of a snippet (sentiment lives in phrases), then a share of its tokens masked or replaced
    by tokens drawn from the training text's unigram distribution."""

    def __init__(self, train_ids: list[list[int]], special: dict, rng: np.random.Generator):
        tokens = np.concatenate([np.asarray(r[1:-1]) for r in train_ids if len(r) > 2])
        self.vocab, counts = np.unique(tokens, return_counts=True)
        self.p = counts / counts.sum()
        self.mask_id, self.rng = special["mask"], rng

    def __call__(self, row: list[int]) -> list[int]:
        body = np.asarray(row[1:-1])
        if len(body) > 3 and self.rng.random() < 0.5:
            n = self.rng.integers(max(2, len(body) // 3), len(body))
            start = self.rng.integers(0, len(body) - n + 1)
            body = body[start : start + n]
        share = self.rng.uniform(0.1, 0.35)
        hit = self.rng.random(len(body)) < share
        masked = hit & (self.rng.random(len(body)) < 0.5)
        body = body.copy()
        body[hit & ~masked] = self.rng.choice(self.vocab, size=int((hit & ~masked).sum()), p=self.p)
        body[masked] = self.mask_id
        return [row[0], *body.tolist(), row[-1]]


# ---------------------------------------------------------------------------- student


def ffn_importance(teacher, train_ids, pad_id, layers, device, batches: int = 20, batch_size: int = 128):
    """Per teacher layer, each FFN neuron's mean |activation| × the norm of its output weights:
    how much of the layer's output passes through it."""
    acts = {t: torch.zeros(teacher.config.intermediate_size, device=device) for t in layers}
    hooks = [teacher.mpnet.encoder.layer[t].intermediate.register_forward_hook(
        lambda _m, _i, out, t=t: acts[t].add_(out.abs().float().sum((0, 1)))) for t in layers]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, min(len(train_ids), batches * batch_size), batch_size):
            ids, mask = pad(train_ids[start : start + batch_size], pad_id, device)
            teacher(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return {t: acts[t] * teacher.mpnet.encoder.layer[t].output.dense.weight.norm(dim=0) for t in layers}


def make_student(name: str, teacher, layers: list[int], ffn: int, importance: dict):
    import copy

    from compress.bert_student import mpnet_as_bert

    source = copy.deepcopy(teacher).float().cpu()
    source.mpnet.encoder.layer = torch.nn.ModuleList(source.mpnet.encoder.layer[t] for t in layers)
    source.config.num_hidden_layers = len(layers)
    with torch.no_grad():
        for layer, t in zip(source.mpnet.encoder.layer, layers, strict=True):
            keep = importance[t].cpu().topk(ffn).indices.sort().values
            up, down = layer.intermediate.dense, layer.output.dense
            new_up, new_down = torch.nn.Linear(up.in_features, ffn), torch.nn.Linear(ffn, down.out_features)
            new_up.weight.copy_(up.weight[keep]), new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep]), new_down.bias.copy_(down.bias)
            layer.intermediate.dense, layer.output.dense = new_up, new_down
    source.config.intermediate_size = ffn
    student = source if name.startswith("mpnet") else mpnet_as_bert(source)
    student.base_model.embeddings.word_embeddings.requires_grad_(False)
    return student


def eager_attention_(model) -> None:
    """Attention maps come from the eager attention only."""
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            return
        except (ValueError, NotImplementedError):
            pass
    model.config._attn_implementation = "eager"


# ---------------------------------------------------------------------------- the objective


def masked_mean(x, mask):
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1)


def objective(s_out, t_out, mask, labels, n_labelled: int, layer_map: list[int], temperature: float = 2.0):
    """soft targets (KL at T, ×T²) on every text + labels (CE) on the original texts + hidden
    states (MSE relative to the teacher's mean square) + attention maps (KL per query row),
    the last two between student layer j and teacher layer layer_map[j] over real tokens."""
    t = temperature
    log_s, log_t = F.log_softmax(s_out.logits.float() / t, -1), F.log_softmax(t_out.logits.float() / t, -1)
    parts = {"soft_target": (log_t.exp() * (log_t - log_s)).sum(-1).mean() * t * t,
             "label": F.cross_entropy(s_out.logits[:n_labelled].float(), labels)}
    hidden, attention = [], []
    for j, k in enumerate(layer_map):
        s_h, t_h = s_out.hidden_states[j + 1].float(), t_out.hidden_states[k + 1].float()
        scale = masked_mean(t_h.pow(2).mean(-1), mask)
        hidden.append(masked_mean((s_h - t_h).pow(2).mean(-1), mask) / scale)
        s_a, t_a = s_out.attentions[j].float(), t_out.attentions[k].float()  # (B, heads, S, S)
        kl_rows = (t_a * (t_a.clamp_min(1e-9).log() - s_a.clamp_min(1e-9).log())).sum(-1).mean(1)
        attention.append(masked_mean(kl_rows, mask))
    parts["hidden"] = sum(hidden) / len(hidden)
    parts["attention"] = sum(attention) / len(attention)
    weights = {"soft_target": 1.0, "label": 0.5, "hidden": 1.0, "attention": 1.0}
    return sum(weights[k] * v for k, v in parts.items()), {k: float(v.detach()) for k, v in parts.items()}


def evaluate(model, rows, labels, pad_id, device, batch_size: int = 256) -> float:
    model.eval()
    right = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(rows), batch_size):
            ids, mask = pad(rows[start : start + batch_size], pad_id, device)
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).cpu()
            right += int((pred == torch.tensor(labels[start : start + batch_size])).sum())
    model.train()
    return right / len(rows)


# ---------------------------------------------------------------------------- training


def train_student(name, teacher, meta, data, importance, device, seconds: float, max_epochs: int,
                  batch_size: int, lr: float, seed: int, log):
    layers, ffn = STUDENTS[name]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    special = meta["special_ids"]
    student = make_student(name, teacher, layers, ffn, importance).to(device).train()
    eager_attention_(student)
    train_ids, train_labels = data["train"]["input_ids"], data["train"]["labels"]
    augment = Augmenter(train_ids, special, rng)
    params = [p for p in student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps_per_epoch = len(train_ids) // batch_size
    record = {"student": name, "teacher_layers": layers, "ffn": ffn, "batch": f"{batch_size} originals + "
              f"{batch_size} augmented", "lr": lr, "seed": seed, "epochs": [], "eval_accuracy_start":
              evaluate(student, data["eval"]["input_ids"], data["eval"]["labels"], special["pad"], device)}
    log(f"{name}: start eval accuracy {record['eval_accuracy_start']:.4f}")
    total_steps, step, start = steps_per_epoch * max_epochs, 0, time.time()
    schedule = None
    for epoch in range(max_epochs):
        order = rng.permutation(len(train_ids))
        sums: dict = {}
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            rows = [train_ids[i] for i in idx]
            ids, mask = pad(rows + [augment(r) for r in rows], special["pad"], device)
            labels = torch.tensor([train_labels[i] for i in idx], device=device)
            if schedule is None and step == 20:  # fit the epochs into the time budget once speed is known
                per_step = (time.time() - start) / 20
                total_steps = min(total_steps, int(seconds / per_step))
                record["planned_steps"], record["seconds_per_step"] = total_steps, round(per_step, 4)
                schedule = True
            warm = max(1, int(0.06 * total_steps))
            scale = min(1.0, (step + 1) / warm) * max(0.0, (total_steps - step) / max(1, total_steps - warm))
            for g in optim.param_groups:
                g["lr"] = lr * min(1.0, scale)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                    output_attentions=True)
                s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            loss, parts = objective(s_out, t_out, mask, labels, len(idx), layers)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if step >= total_steps:
                break
        n = b + 1
        acc = evaluate(student, data["eval"]["input_ids"], data["eval"]["labels"], special["pad"], device)
        record["epochs"].append({"epoch": epoch + 1, "steps": step, "eval_accuracy": round(acc, 4),
                                 **{k: round(v / n, 5) for k, v in sums.items()}})
        log(f"{name}: epoch {epoch + 1} step {step}/{total_steps} eval {acc:.4f} "
            + " ".join(f"{k} {v / n:.4f}" for k, v in sums.items()) + f" ({time.time() - start:.0f} s)")
        if step >= total_steps:
            break
    record["steps"], record["seconds"] = step, round(time.time() - start, 1)
    record["eval_accuracy_final"] = record["epochs"][-1]["eval_accuracy"]
    return student, record


def save_student(student, out: Path, name: str) -> list[str]:
    """The trained tensors in fp16, split into files under 16 MiB; the frozen word embeddings stay
    behind (the assembler takes them from the packed teacher, exactly what the student saw)."""
    state = {k: v.detach().cpu().to(torch.float16) for k, v in student.state_dict().items()
             if not k.endswith("embeddings.word_embeddings.weight")}
    files, chunk, size = [], {}, 0
    for k, v in state.items():
        if chunk and size + v.numel() * 2 > 15 * 2**20:
            files.append(chunk)
            chunk, size = {}, 0
        chunk[k], size = v, size + v.numel() * 2
    files.append(chunk)
    names = []
    for i, c in enumerate(files):
        names.append(f"{name}.{i}.pt")
        torch.save(c, out / names[-1])
    (out / f"{name}.config.json").write_text(student.config.to_json_string())
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=Path, required=True, help="pack.py's output folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", type=Path, help="where students that do not fit --out wait for another call")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS))
    parser.add_argument("--seconds", type=float, default=150, help="training time per student")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--eval-limit", type=int, help="smoke runs: evaluate on the first N held-out texts")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    log_lines = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    import transformers

    teacher, meta = load_teacher(args.parts, device)
    eager_attention_(teacher)
    data = torch.load(args.parts / "data.pt", weights_only=False)
    if args.eval_limit:
        data["eval"] = {k: v[: args.eval_limit] for k, v in data["eval"].items()}
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "teacher_copy": meta["teacher_copy"],
              "teacher_eval_accuracy_here": evaluate(teacher, data["eval"]["input_ids"], data["eval"]["labels"],
                                                     meta["special_ids"]["pad"], device),
              "students": []}
    log(f"teacher (INT8 copy) eval accuracy on {report['device']}: {report['teacher_eval_accuracy_here']:.4f}")
    layers = sorted({t for s in args.students for t in STUDENTS[s][0]})
    importance = ffn_importance(teacher, data["train"]["input_ids"], meta["special_ids"]["pad"], layers, device)
    for i, name in enumerate(args.students):
        student, record = train_student(name, teacher, meta, data, importance, device, args.seconds,
                                        args.max_epochs, args.batch_size, args.lr, args.seed, log)
        where = args.out if i == 0 or args.keep is None else args.keep
        where.mkdir(parents=True, exist_ok=True)
        record["files"] = save_student(student, where, name)
        record["saved_to"] = "out" if where == args.out else "keep"
        report["students"].append(record)
        (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        del student
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (args.out / "log.txt").write_text("\n".join(log_lines) + "\n")


if __name__ == "__main__":
    main()
