"""Benchmark rows (results.jsonl) → results.csv, results.md (rows: models, columns:
targets, one table per shape) and pareto.png (the task's metric vs latency, front per target).
Speedups are computed here, from the rows, so `compress table` re-renders them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from compress.bench.compare import comparison_table
from compress.bench.plan import BASELINE, ORT_FP32
from compress.report import md_table

CSV_COLUMNS = [
    "model", "group", "role", "kind", "target", "shape", "batch_size", "seq_len", "threads", "status", "reason",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "iterations", "metric", "metric_value", "examples",
    "size_bytes", "peak_rss_mb", "speedup_vs_baseline", "baseline_reference", "speedup_vs_ort_fp32",
    "ort_fp32_reference", "paired_speedup", "artifact_sha256", "cpu", "instruction_sets", "git_commit", "git_dirty",
    "command", "run_id",
]
REFERENCES = ((BASELINE, "torch-cpu", "speedup_vs_baseline", "baseline_reference"),
              (ORT_FP32, "ort-cpu", "speedup_vs_ort_fp32", "ort_fp32_reference"))


def read_rows(path: Path) -> list[dict]:
    """Rows of a results.jsonl; a torn last line (a crash mid-write) is ignored."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _reference(rows: list[dict], row: dict, role: str, target: str) -> dict | None:
    """The same-shape, same-threads measurement of a reference; same run group preferred."""
    cands = [r for r in _ok(rows) if r.get("role") == role and r["target"] == target
             and r["shape"] == row["shape"] and r["threads"] == row["threads"]]
    same = [r for r in cands if r.get("group") == row.get("group")]
    return (same or [r for r in cands if r.get("group") is None] or cands or [None])[0]


def named_reference(rows: list[dict], row: dict, name: str | None, target: str) -> dict | None:
    """The same-shape, same-threads measurement of the reference a row names."""
    return next((r for r in _ok(rows) if r["model"] == name and r["target"] == target
                 and r["shape"] == row["shape"] and r["threads"] == row["threads"]), None)


def with_speedups(rows: list[dict]) -> list[dict]:
    """Each ok row's p50 speedups against the references it names (baseline_reference,
    ort_fp32_reference: None means it has none); rows written before references were named
    fall back to the reference role of their run group."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("status") == "ok":
            for role, target, key, named in REFERENCES:
                ref = named_reference(rows, r, r[named], target) if named in r else _reference(rows, r, role, target)
                r[key] = round(ref["p50_ms"] / r["p50_ms"], 3) if ref and r.get("p50_ms") else None
                if named not in r and ref is not None:
                    r[named] = ref["model"]
        out.append(r)
    return out


def metric_of(row: dict) -> tuple[str, float | None]:
    """The metric a row's table shows and its value (rows from before `metric` show accuracy)."""
    name = row.get("metric") or "accuracy"
    return name, row.get(name)


def accuracy_by_cell(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """The task's metric is measured once per (model, target), in that pair's first cell."""
    return {(r["model"], r["target"]): r for r in _ok(rows) if metric_of(r)[1] is not None}


def _short(metric: str) -> str:
    return "acc" if metric == "accuracy" else metric


def write_csv(rows: list[dict], path: Path) -> None:
    accuracy = accuracy_by_cell(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in with_speedups(rows):
            env = r.get("env") or {}
            acc = accuracy.get((r["model"], r["target"]), {})
            name, value = metric_of(acc) if acc and r.get("status") == "ok" else (None, None)
            w.writerow({**r, "metric": name, "metric_value": value,
                        "examples": acc.get("examples") if r.get("status") == "ok" else None,
                        "cpu": env.get("cpu") or env.get("processor"),
                        "instruction_sets": " ".join(env.get("instruction_sets") or []),
                        "git_commit": env.get("git_commit"), "git_dirty": is_dirty(env), "command": env.get("command")})


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _sections(rows: list[dict]) -> list[tuple[int, str]]:
    return _unique((r["threads"], r["shape"]) for r in _ok(rows))


def _fmt_cell(r: dict | None, acc: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason', '')}".replace("|", "/")
    parts = [f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms", f"{r['throughput']:.1f}/s"]
    if acc:
        name, value = metric_of(acc)
        parts.append(f"{_short(name)} {value:.4f}")
    parts.append(f"{r['size_bytes'] / 1e6:.1f} MB")
    sp = [f"{r[k]:.2f}x {label}" for k, label in (("speedup_vs_baseline", "torch"), ("speedup_vs_ort_fp32", "ort"))
          if r.get(k) is not None]
    if r.get("paired_speedup") is not None:  # timed against the ORT reference in the same process
        sp.append(f"{r['paired_speedup']:.2f}x ort paired")
    if sp:
        parts.append(", ".join(sp))
    return " · ".join(parts)


def markdown_table(rows: list[dict]) -> str:
    rows = with_speedups(rows)
    accuracy = accuracy_by_cell(rows)
    models = _unique(r["model"] for r in rows)
    targets = _unique(r["target"] for r in rows)
    measured = [t for t in targets if any(r["target"] == t and r["status"] != "skipped" for r in rows)]
    metric = next((metric_of(r)[0] for r in accuracy.values()), "accuracy")
    lines = [f"Each cell: latency p50 / p99 per call · throughput (items/s) · eval {metric} · size on disk · "
             f"speedup of p50 vs the torch-cpu fp32 baseline ({_names(rows, 'baseline_reference')}) and vs ONNX "
             f"Runtime fp32 ({_names(rows, 'ort_fp32_reference')}) at the same shape and threads."]
    env = next((r.get("env") for r in rows if r.get("env")), None) or {}
    if is_dirty(env):
        lines.insert(0, f"**dirty**: measured from a working tree with uncommitted changes to tracked files "
                        f"(git {env.get('git_commit')}); no commit holds the code that made these numbers.\n")
    for threads, shape in _sections(rows):
        body = []
        for m in models:
            cells = []
            for t in measured:
                hit = next((r for r in rows if r["model"] == m and r["target"] == t and r["shape"] == shape
                            and r["threads"] == threads), None)
                hit = hit or next((r for r in rows if r["model"] == m and r["target"] == t and r["status"] == "failed"), None)
                cells.append(_fmt_cell(hit, accuracy.get((m, t))))
            if any(cells):
                body.append([m, *cells])
        lines += ["", f"### {shape.replace('x', ' × ', 1)} ({threads} threads)", "", md_table(["model", *measured], body)]
    skipped = _unique((r["target"], r["reason"]) for r in rows if r["status"] == "skipped")
    if skipped:
        lines += ["", "Skipped targets (not measured):", *(f"- {t}: {reason}" for t, reason in skipped)]
    compared = comparison_table(rows)
    if compared:
        lines += ["", "### Predictions against the fp32 reference", "",
                  "Example by example on the same eval examples: how often the labels agree, how many examples "
                  "only one of the two gets right, and McNemar's exact p for 'equally accurate' (a small p: the "
                  "accuracy difference is more than chance).", "", compared]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed cells:", *(f"- {r['model']} on {r['target']} {r['shape']}: {r['reason']}" for r in failed)]
    lines += ["", environment_line(rows)]
    return "\n".join(lines) + "\n"


def _names(rows: list[dict], key: str) -> str:
    names = _unique(r.get(key) for r in _ok(rows) if r.get(key))
    return ", ".join(f"`{n}`" for n in names) if names else "none in this run"


def is_dirty(env: dict) -> bool:
    return bool(env.get("git_dirty")) or str(env.get("git_commit") or "").endswith("-dirty")


def environment_line(rows: list[dict]) -> str:
    env = next((r.get("env") for r in rows if r.get("env")), None) or {}
    pkgs = env.get("packages", {})
    libs = ", ".join(f"{k} {v}" for k, v in pkgs.items() if k in ("torch", "onnxruntime", "transformers", "compress"))
    cvs = [r["cv"] for r in _ok(rows) if r.get("cv") is not None]
    cv = f"; CV of per-call latency: median {sorted(cvs)[len(cvs) // 2]:.3f}, max {max(cvs):.3f}" if cvs else ""
    isa = f" ({', '.join(env['instruction_sets']) or 'no AVX2'})" if env.get("instruction_sets") is not None else ""
    dirty = " (**dirty**)" if is_dirty(env) else ""
    command = f" Command: `{env['command']}`." if env.get("command") else ""
    return (f"Environment: {env.get('cpu') or env.get('processor', '?')}{isa}, {env.get('cores_usable', '?')} usable "
            f"cores, {libs}; git {env.get('git_commit', '?')}{dirty}; load average at start "
            f"{env.get('load_avg_at_start', '?')}{cv}.{command}" + repeats_line(rows))


def repeats_line(rows: list[dict]) -> str:
    spreads = sorted(r["repeats"]["spread"] for r in _ok(rows) if r.get("repeats"))
    if not spreads:
        return ""
    n = max(r["repeats"]["n"] for r in _ok(rows) if r.get("repeats"))
    return (f" Each cell measured {n} times in interleaved rounds, each in a fresh process; the table shows the "
            f"median. Spread of a cell's p50 between repeats ((max - min) / median): median "
            f"{spreads[len(spreads) // 2]:.1%}, max {spreads[-1]:.1%}.")


def write_plot(rows: list[dict], path: Path) -> None:
    """Accuracy vs p50 latency at the first measured shape; the Pareto front (no other
    point of the same target is both faster and at least as accurate) per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = with_speedups(rows)
    accuracy = accuracy_by_cell(rows)
    metric = next((metric_of(r)[0] for r in accuracy.values()), "accuracy")
    sections = _sections(rows)
    fig, ax = plt.subplots(figsize=(8, 5))
    if sections:
        threads, shape = sections[0]
        for target in _unique(r["target"] for r in _ok(rows)):
            pts = [(r["p50_ms"], metric_of(accuracy[(r["model"], target)])[1], r["model"]) for r in _ok(rows)
                   if r["target"] == target and r["shape"] == shape and r["threads"] == threads
                   and (r["model"], target) in accuracy]
            if not pts:
                continue
            dots = ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=target)
            for x, y, name in pts:
                ax.annotate(name.split("/")[-1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = pareto_front([(x, y) for x, y, _ in pts])
            ax.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post", color=dots.get_facecolor()[0])
        ax.set_title(f"{metric} vs latency ({shape}, {threads} threads)")
        ax.legend()
    else:
        ax.set_title("no measured cells")
    ax.set_xlabel("p50 latency per call (ms)")
    ax.set_ylabel(f"eval {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, accuracy) not dominated by a faster-or-equal, at-least-as-accurate one, by latency."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def write_reports(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    paths = {"csv": out_dir / "results.csv", "md": out_dir / "results.md", "png": out_dir / "pareto.png"}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(markdown_table(rows), encoding="utf-8")
    write_plot(rows, paths["png"])
    return paths
