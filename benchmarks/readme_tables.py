"""Every table in a README is generated from committed raw files. A generated table sits
between two markers that name the command that makes it:

    <!-- generated: ledger benchmarks/results/quickstart/run -->
    | stage | ... |
    <!-- end generated -->

    python benchmarks/readme_tables.py --write [README.md ...]   # regenerate the tables in place
    python benchmarks/readme_tables.py --check [README.md ...]   # exit 1 naming each table that differs

Kinds (paths relative to the repository root):
  ledger RUN        the accuracy ledger of a committed run record (compress.report.markdown_summary)
  tasks RUN...      one row per task run: fp32 vs INT8 metric and ORT batch-1 latency (benchmarks/tasks/collect.py)
  bench RESULTS [B] per model: batch 1 at real lengths with both speedups, throughput at batch B (32) real lengths
  speedups RESULTS MODEL   one model's p50 and speedups at every shape of a results.jsonl
  repeats DIR...    the same cell measured twice per run (a quickstart-repeat.yaml results.jsonl per DIR)
  repeats-of RESULTS   each cell's p50 in every repeat of one results.jsonl (repeats: N), and their spread
  steadiness SUMMARY   benchmarks/steadiness/thread_modes.py's summary.json: p50 and spread per thread setting
  paired RESULTS    each paired cell (paired: true): its speedup over the ORT fp32 reference timed in the same
                    process against the ratio of separately timed p50s, each with its spread between repeats
  drift SUMMARY     benchmarks/steadiness/drift.py's drift.json: spread within and between processes per setting
  cells RESULTS     every cell: threads, shape, median p50 with its repeats' range and spread, throughput, metric
  generation RESULTS   benchmarks/causal_lm/generation.py's results.jsonl: TTFT, decode tokens/s, memory per cell
  rouge FILE...     benchmarks/causal_lm/rouge_xsum.py's JSON per model: ROUGE-1/2/L and the protocol
  kernels RESULTS   benchmarks/cpu_kernels/split_fused.py's results.json: each fused op against its parts
  gpu-distill REPORT...   benchmarks/headline/gpu_distill/distill_gpu.py's report.json per run: per student its
                    layers, FFN width, training steps and time, held-out accuracy before and after
  vocabulary RUN...   one row per committed run record with a prune_vocabulary stage: rows kept, eval coverage,
                    parameters and accuracy before and after, and the size of the run's last artifact
  distill-runs RUN...   one row per committed distill run record: transfer set (augment), steps, time,
                    held-out accuracy of the teacher and of the student
  fidelity RESULTS  benchmarks/ptq_fidelity/fidelity.py's results.json: per INT8 variant accuracy, agreement, logit error
  agreement RESULTS [MODEL]   per model with predictions in a results.jsonl: label agreement with its fp32
                    reference (or with MODEL), the examples only one of the two gets right, McNemar's exact p
tests/test_readme_tables.py runs --check on every README the repository ships."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "tasks"))

BLOCK = re.compile(r"(<!-- generated: (?P<command>[^\n]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def ledger(run: str) -> str:
    from compress.report import markdown_summary

    return "\n".join(ln for ln in markdown_summary(ROOT / run).splitlines() if ln.startswith("|")) + "\n"


def tasks(*runs: str) -> str:
    from collect import readme_row

    head = ("| run | task | metric | fp32 | INT8 | Δ (pts) | fp32 p50 ms | INT8 p50 ms | speedup | size |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(readme_row(ROOT / r) + "\n" for r in runs)


def bench(results: str, throughput_batch: str = "32") -> str:
    """Per model (in the file's order): its target, p50 at batch 1 with both speedups (against
    the references each row names), throughput at batch 32, the eval metric and size."""
    from compress.bench.report import (
        accuracy_by_cell,
        metric_of,
        read_rows,
        with_speedups,
    )
    from compress.report import md_table

    rows = with_speedups(read_rows(ROOT / results))
    ok = [r for r in rows if r.get("status") == "ok" and r.get("seq_len") == "real"]
    accuracy = accuracy_by_cell(rows)
    metric = next((metric_of(r)[0] for r in accuracy.values()), "accuracy")
    body = []
    for model, target in dict.fromkeys((r["model"], r["target"]) for r in ok):
        b1 = next((r for r in ok if (r["model"], r["target"]) == (model, target) and r["batch_size"] == 1), None)
        b32 = next((r for r in ok if (r["model"], r["target"]) == (model, target)
                    and r["batch_size"] == int(throughput_batch)), None)
        if b1 is None:
            continue
        acc = accuracy.get((model, target))
        speed = [f"{b1[k]:.2f}x" if b1.get(k) is not None else "-" for k in ("speedup_vs_baseline", "speedup_vs_ort_fp32")]
        body.append([model, target, f"{b1['p50_ms']:.2f} ms", *speed,
                     f"{b32['throughput']:.1f}/s" if b32 else "-",
                     f"{metric_of(acc)[1]:.4f}" if acc else "-", f"{b1['size_bytes'] / 1e6:.1f} MB"])
    refs = [next((r.get(k) for r in ok if r.get(k)), None) for k in ("baseline_reference", "ort_fp32_reference")]
    head = ["model", "target", "p50 batch 1", f"vs {refs[0] or 'torch fp32'}", f"vs {refs[1] or 'ORT fp32'}",
            f"throughput batch {throughput_batch}", metric, "size"]
    return md_table(head, body) + "\n"


def speedups(results: str, model: str) -> str:
    from compress.bench.report import read_rows, with_speedups
    from compress.report import md_table

    rows = [r for r in with_speedups(read_rows(ROOT / results)) if r.get("status") == "ok" and r["model"] == model]
    body = [[r["shape"].replace("x", " × ", 1), r["target"], f"{r['p50_ms']:.2f} ms",
             *(f"{r[k]:.2f}x" if r.get(k) is not None else "-" for k in ("speedup_vs_baseline", "speedup_vs_ort_fp32"))]
            for r in rows]
    return md_table(["shape", "target", "p50", "vs torch fp32", "vs ORT fp32"], body) + "\n"


def repeats(*dirs: str) -> str:
    """p50 of each repeat, their spread ((max - min) / min) and each repeat's per-call CV."""
    from compress.bench.report import read_rows
    from compress.report import md_table

    body = []
    for d in dirs:
        ok = [r for r in read_rows(ROOT / d / "results.jsonl") if r.get("status") == "ok"]
        p50s = [r["p50_ms"] for r in ok]
        body.append([f"`{Path(d).name}/`", *(f"{p:.2f} ms" for p in p50s),
                     f"{(max(p50s) - min(p50s)) / min(p50s):.1%}", " / ".join(f"{r['cv']:.2f}" for r in ok)])
    n = max(len(row) - 3 for row in body)
    return md_table(["run", *(f"repeat {i + 1} p50" for i in range(n)), "spread", "CV per call"], body) + "\n"


def repeats_of(results: str) -> str:
    from compress.bench.report import read_rows
    from compress.report import md_table

    ok = [r for r in read_rows(ROOT / results) if r.get("status") == "ok" and r.get("repeats")]
    n = max(r["repeats"]["n"] for r in ok)
    body = [[r["model"], r["target"], *(f"{p:.2f} ms" for p in r["repeats"]["p50_ms"]), f"{r['p50_ms']:.2f} ms",
             f"{r['repeats']['spread']:.0%}"] for r in ok]
    return md_table(["model", "target", *(f"repeat {i + 1}" for i in range(n)), "median", "spread"], body) + "\n"


def cells(results: str) -> str:
    """Every measured cell of a results.jsonl: threads and batch, the median p50 of its
    repeats with their range and spread, throughput, and the model's metric."""
    from compress.bench.report import accuracy_by_cell, metric_of, read_rows
    from compress.report import md_table

    rows = read_rows(ROOT / results)
    accuracy = accuracy_by_cell(rows)
    body = []
    for r in (r for r in rows if r.get("status") == "ok"):
        p50s = (r.get("repeats") or {}).get("p50_ms") or [r["p50_ms"]]
        acc = accuracy.get((r["model"], r["target"]))
        body.append([r["model"], r["target"], str(r["threads"]), r["shape"], f"{r['p50_ms']:.2f} ms",
                     f"{min(p50s):.2f}-{max(p50s):.2f}", f"{(max(p50s) - min(p50s)) / r['p50_ms']:.0%}",
                     f"{r['throughput']:.1f}/s", f"{metric_of(acc)[1]:.4f}" if acc else "-"])
    metric = next((metric_of(a)[0] for a in accuracy.values()), "accuracy")
    return md_table(["model", "target", "threads", "shape", "p50 (median)", "repeats' p50 range", "spread",
                     "throughput", metric], body) + "\n"


def paired(results: str) -> str:
    """Each cell timed against its ONNX Runtime fp32 reference in the same process (bench
    `paired: true`): the paired speedup's median and spread over repeats, next to the speedup
    from the two cells' separately timed p50s and those p50s' spreads."""
    from compress.bench.report import named_reference, read_rows, with_speedups
    from compress.report import md_table

    rows = read_rows(ROOT / results)
    body = []
    for r in with_speedups(rows):
        if r.get("status") != "ok" or r.get("paired_speedup") is None:
            continue
        reps = r.get("repeats") or {}
        ratios = reps.get("paired_speedup") or [r["paired_speedup"]]
        ref = named_reference(rows, r, r["ort_fp32_reference"], r["target"])
        p50_spreads = " / ".join(f"{(row.get('repeats') or {}).get('spread', 0):.0%}" for row in (r, ref))
        body.append([r["model"], str(r["threads"]), r["shape"], f"{r['paired_speedup']:.2f}x",
                     f"{min(ratios):.2f}-{max(ratios):.2f}", f"{reps.get('paired_spread', 0):.0%}",
                     f"{r['speedup_vs_ort_fp32']:.2f}x", p50_spreads])
    return md_table(["model", "threads", "shape", "paired speedup (median)", "repeats' range", "spread",
                     "speedup from separate p50s", "spread of the two p50s"], body) + "\n"


def steadiness(summary: str) -> str:
    """benchmarks/steadiness/thread_modes.py's summary.json: per thread setting, the median of
    the processes' p50s and their spread, with the range of the processes."""
    import json

    from compress.report import md_table

    settings = json.loads((ROOT / summary).read_text())["settings"]
    body = [[name, f"{v['median_ms']:.2f} ms", f"{v['spread']:.1%}", f"{min(v['p50_ms']):.2f}-{max(v['p50_ms']):.2f} ms"]
            for name, v in settings.items()]
    return md_table(["setting", "median p50", "spread between processes", "processes' p50 range"], body) + "\n"


def drift(summary: str) -> str:
    """benchmarks/steadiness/drift.py's drift.json: per setting, what is measured, the median of
    the processes, their spread, and the widest spread of windows inside one process."""
    import json

    from compress.report import md_table

    settings = json.loads((ROOT / summary).read_text())["settings"]
    body = [[name, v["measure"], f"{v['median']:.3f}", f"{v['spread_between_processes']:.1%}",
             f"{max(v['spread_within_process']):.1%}"] for name, v in settings.items()]
    return md_table(["setting", "measure", "median of processes", "spread between processes",
                     "widest spread inside a process"], body) + "\n"


def generation(results: str) -> str:
    """A causal LM's generation cells: TTFT, decode tokens/s, peak memory and size per model and shape."""
    import json

    from compress.bench.generation import markdown_table

    rows = [json.loads(line) for line in (ROOT / results).read_text(encoding="utf-8").splitlines() if line.strip()]
    return "\n".join(ln for ln in markdown_table(rows).splitlines() if ln.startswith("|")) + "\n"


def rouge(*files: str) -> str:
    """One row per ROUGE evaluation of XSum summaries (compress.xsum): the scores and the protocol."""
    import json

    from compress.markdown import md_table

    body = []
    for f in files:
        r = json.loads((ROOT / f).read_text(encoding="utf-8"))
        body.append([Path(f).stem, r["kind"], f"{r['rouge1']:.4f}", f"{r['rouge2']:.4f}", f"{r['rougeL']:.4f}",
                     f"{r['documents']} x {r['document_tokens']} tokens, {r['decoding']}, <= {r['max_new_tokens']} new"])
    return md_table(["run", "model kind", "ROUGE-1", "ROUGE-2", "ROUGE-L", "documents, decoding"], body) + "\n"


def kernels(results: str) -> str:
    """Each ONNX Runtime fused op against the parts optimize_onnx splits it into, per shape and threads."""
    import json

    from compress.markdown import md_table

    cases = json.loads((ROOT / results).read_text(encoding="utf-8"))["cases"]
    body = [[c["op"], "x".join(map(str, c["shape"])), c["stands_for"], str(c["threads"]), f"{c['fused_ms']:.3f} ms",
             c["parts"], f"{c['parts_ms']:.3f} ms", f"{c['fused_over_parts']:.2f}x"] for c in cases]
    return md_table(["fused op", "shape", "stands for", "threads", "fused", "parts", "parts time",
                     "fused / parts"], body) + "\n"


def gpu_distill(*reports: str) -> str:
    """One row per student that distill_gpu.py trained: where it started, how long it trained
    and its held-out accuracy at the start and at the end (no checkpoint chosen on it)."""
    import json

    from compress.markdown import md_table

    body = []
    for f in reports:
        report = json.loads((ROOT / f).read_text(encoding="utf-8"))
        for s in report["students"]:
            body.append([s["student"], ", ".join(map(str, s["teacher_layers"])), str(s["ffn"]),
                         f"{s['steps']} ({len(s['epochs'])} epochs)", f"{s['seconds']:.0f} s",
                         f"{s['eval_accuracy_start']:.4f}", f"{s['eval_accuracy_final']:.4f}", report["device"]])
    return md_table(["student", "teacher layers", "FFN", "steps", "training", "accuracy at start",
                     "accuracy at end", "device"], body) + "\n"


def vocabulary(*runs: str) -> str:
    """Per run record: what its prune_vocabulary stage kept, how much of the eval split's text
    keeps every token, and what the pruning did to parameters, accuracy and the final size."""
    import json

    from compress.markdown import md_table

    body = []
    for run in runs:
        stages = sorted((ROOT / run).glob("*/stage.json"))
        pruned = next(json.loads(p.read_text()) for p in stages if p.parent.name.endswith("-prune_vocabulary"))
        last = json.loads(stages[-1].read_text())
        v, before = pruned["vocabulary"], pruned["input"]
        kept = f"{v['rows_after']:,} of {v['rows_before']:,} ({v['kept_seen_in_train']:,} seen in train)"
        body.append([Path(run).name, kept, f"{v['eval_coverage']['tokens_kept']:.2%}",
                     f"{v['eval_coverage']['examples_unchanged']:.2%}",
                     f"{before['parameters'] / 1e6:.1f}M → {pruned['parameters'] / 1e6:.1f}M",
                     f"{before['accuracy']:.4f} → {pruned['accuracy']:.4f}",
                     f"{last['name']}: {last['accuracy']:.4f}, {last['size_bytes'] / 1e6:.1f} MB"])
    return md_table(["run", "rows kept", "eval tokens kept", "eval examples unchanged", "parameters",
                     "accuracy (torch)", "last stage"], body) + "\n"


def distill_runs(*runs: str) -> str:
    """One row per distill run record (RUN/01-distill/stage.json): its transfer set (augment),
    training steps and time, and held-out accuracy against its input (the teacher): a
    classification run's."""
    import json

    from compress.markdown import md_table

    body = []
    for run in runs:
        record = json.loads((ROOT / run / "01-distill" / "stage.json").read_text(encoding="utf-8"))
        training, aug = record["training"], record.get("augmentation")
        teacher, student = record["input"]["accuracy"], record["accuracy"]
        body.append([Path(run).name, f"{aug['copies']} copies" if aug else "none",
                     str(aug["transfer_set"] if aug else training["train_examples"]),
                     f"{training['steps']} ({training['epochs']:g} epochs)", f"{training['seconds']:.0f} s",
                     f"{teacher:.4f}", f"{student:.4f}", f"{(student - teacher) * 100:+.2f}"])
    return md_table(["run", "augment", "transfer set", "steps", "training", "teacher", "student",
                     "Δ pts"], body) + "\n"


def fidelity(results: str) -> str:
    """One row per dynamic INT8 variant of benchmarks/ptq_fidelity: accuracy, label agreement with
    the fp32 export and the logit error."""
    import json

    from compress.markdown import md_table

    rows = json.loads((ROOT / results).read_text(encoding="utf-8"))["rows"]
    body = [[f"`{r['variant']}`".replace("|", "\\|"), str(r.get("nodes", "")), f"{r['accuracy']:.4f}"]
            + ([f"{r['agreement']:.4f}", f"{r['mean_abs_logit_diff']:.4f}", f"{r['p99_abs_logit_diff']:.4f}"]
               if "agreement" in r else ["(reference)", "", ""]) for r in rows]
    return md_table(["variant", "nodes", "accuracy", "agreement with fp32", "mean abs logit diff", "p99"],
                    body) + "\n"


def agreement(results: str, against: str | None = None) -> str:
    """Each model's predictions against its fp32 reference's (or the model named `against`), example by example."""
    from compress.bench.compare import comparison_table
    from compress.bench.report import read_rows, with_speedups

    return comparison_table(with_speedups(read_rows(ROOT / results)), against) + "\n"


KINDS = {"ledger": ledger, "tasks": tasks, "bench": bench, "speedups": speedups, "repeats": repeats,
         "repeats-of": repeats_of, "cells": cells, "steadiness": steadiness, "drift": drift, "paired": paired,
         "generation": generation, "rouge": rouge, "kernels": kernels,
         "gpu-distill": gpu_distill, "distill-runs": distill_runs, "vocabulary": vocabulary, "fidelity": fidelity,
         "agreement": agreement}


def render(command: str) -> str:
    kind, *args = shlex.split(command)
    if kind not in KINDS:
        raise SystemExit(f"unknown table kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind](*args)


def regenerate(text: str) -> tuple[str, list[str]]:
    """The text with every generated block re-rendered, and the commands whose block differed."""
    differs = []

    def one(m: re.Match) -> str:
        fresh = render(m.group("command"))
        if fresh != m.group("body"):
            differs.append(m.group("command"))
        return m.group(1) + fresh + m.group(4)

    return BLOCK.sub(one, text), differs


def readmes() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "benchmarks" / "results").rglob("README.md"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    failed = False
    for path in args.files or readmes():
        text = path.read_text(encoding="utf-8")
        new, differs = regenerate(text)
        for command in differs:
            print(f"{path}: table '{command}' differs from what its raw file renders")
        if args.write and new != text:
            path.write_text(new, encoding="utf-8")
        failed |= bool(differs) and args.check
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
