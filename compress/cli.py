"""Command line: argument parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import typer
from rich.console import Console

from compress.errors import CompressError

app = typer.Typer(add_completion=True, no_args_is_help=True, help="Compress fine-tuned transformer models.")
# Tables stay readable when output goes to a file or CI log (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from compress.version import __version__

        sys.stdout.write(f"compress {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Compress fine-tuned transformer models."""


QUIET_HELP = "Only warnings and errors on stderr (no progress lines)."


def _setup(verbose: bool, offline: bool = False, quiet: bool = False) -> None:
    if verbose and quiet:
        raise _fail("--verbose and --quiet: choose one", 2)
    if offline:  # Hub ids from the Hugging Face cache only (HF_HUB_OFFLINE=1 does the same)
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.logging import RichHandler

    from compress import progress

    # bars on the log's console: a log line printed during a step lands above its bar
    progress.configure(console=err_console, enabled=not quiet)
    # Libraries log chatty INFO lines through the root logger (ORT's quantizer and
    # fusion passes): keep the root at WARNING and let compress itself speak at INFO.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("compress").setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not verbose:
        # transformers imports torchao (pinned for NNCF) on every model load; on a CPU-only
        # machine it warns about its CUDA kernels, and torch about its enum registrations.
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Advice that does not apply to what compress does: the tracer's note on constants in
        # the attention mask (the export's parity check covers it) and ORT's suggestion to
        # pre-process before dynamic quantization (static mode does pre-process).
        warnings.filterwarnings("ignore", message="torch.tensor results are registered as constants")
        logging.getLogger().handlers[0].addFilter(
            lambda record: not record.getMessage().startswith("Please consider to run pre-processing"))


def _fail(message: str, code: int) -> typer.Exit:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _need_training(command: str) -> None:
    """A runtime-only install (no `train` extra) stops here with one line saying what to install."""
    from compress.extras import require_training_stack

    try:
        require_training_stack(f"compress {command}")
    except CompressError as e:
        raise _fail(str(e), e.exit_code) from None


def _load(recipe: Path):
    try:  # importing the recipe module loads the installed stage plugins: a broken one is one line too
        from compress.recipe import load_recipe

        return load_recipe(recipe)
    except CompressError as e:
        raise _fail(str(e), e.exit_code) from None


def _warn_slow_settings(spec, recipe: Path) -> None:
    """Settings known to make a slow artifact on the recipe's target: one warning line each."""
    from rich.markup import escape

    from compress.recipe_warnings import recipe_warnings

    for line in recipe_warnings(spec):
        err_console.print(f"[bold yellow]warning:[/] {escape(f'{recipe}: {line}')}", highlight=False)


OFFLINE_HELP = "Resolve Hugging Face Hub ids from the local cache only (as HF_HUB_OFFLINE=1)."


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Output root; the run goes to OUT/<recipe name>/."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and exit."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, even unchanged ones."),
    from_stage: str = typer.Option(None, "--from", help="Redo from this stage (number, NN-kind or kind)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    offline: bool = typer.Option(False, "--offline", help=OFFLINE_HELP),
) -> None:
    """Run a recipe: every stage in order, each measured on the same eval split."""
    from compress.distributed import launch

    job = launch()
    _setup(verbose, offline, quiet or not (job.main or verbose))  # ranks other than 0: warnings and errors only
    _need_training("run")
    spec = _load(recipe)
    if spec.trust_remote_code:
        err_console.print(f"[bold yellow]warning:[/] {recipe}: trust_remote_code is on: the model directory's "
                          "own Python code will be executed", highlight=False)
    _warn_slow_settings(spec, recipe)
    if dry_run:
        _print_plan(spec, out, recipe)
        return
    from compress.pipeline import run_recipe
    from compress.report import markdown_summary, print_summary
    from compress.resume import resolve_from_stage

    run_dir = out / spec.name
    who = f"{job.describe()}: " if job.multi else ""  # which process failed, when several run
    _stop_on_sigterm()
    try:
        from_index = resolve_from_stage(spec.stages, from_stage) if from_stage else None
        ctx = run_recipe(spec, out, recipe_path=recipe.resolve(), force=force, from_index=from_index)
    except KeyboardInterrupt:
        raise _fail(f"{who}interrupted{_kept(run_dir)}", 130) from None
    except CompressError as e:
        raise _fail(f"{who}{e}{_kept(run_dir)}", e.exit_code) from None
    except OSError as e:  # disk full, permissions: the user's environment, not a bug
        where = e.filename or run_dir
        raise _fail(f"{who}cannot write {where}: {e.strerror or e}{_kept(run_dir)}", 2) from None
    except Exception as e:  # a bug or an environment problem: one line here, the traceback in a file
        log_path = run_dir / (f"error.rank{job.rank}.log" if job.multi else "error.log")
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:
            log_path = "(not writable)"
        raise _fail(f"{who}{type(e).__name__}: {e} (traceback in {log_path}){_kept(run_dir)}", 1) from None
    if ctx is None:  # another rank than 0: rank 0 writes and prints the run
        return
    (ctx.run_dir / "summary.md").write_text(markdown_summary(ctx.run_dir), encoding="utf-8")
    print_summary(ctx.run_dir, console)
    console.print(f"run directory: {ctx.run_dir}  (manifest.json, summary.md)")


def _stop_on_sigterm() -> None:
    """A launcher stops a job with SIGTERM (torchrun, when another rank failed; a scheduler at
    its time limit): end like Ctrl-C, so the manifest says failed and a training checkpoint
    survives for the rerun."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, interrupt)


def _kept(run_dir: Path) -> str:
    done = sorted(p.name for p in run_dir.glob("[0-9][0-9]-*") if (p / "stage.json").is_file())
    return f" (completed stages kept in {run_dir}: {', '.join(done)})" if done else ""


def _data_summary(spec, recipe: Path) -> str:
    """Load and check the data exactly as a run does; the one-line summary, or exit 2 with
    the one-line reason (naming the data file and row)."""
    from compress.data import load_splits
    from compress.data_checks import summary_line
    from compress.models import resolve_model_dir

    try:
        splits = load_splits(spec.data, spec.task)
    except CompressError as e:
        raise _fail(f"{recipe}: data: {e}", e.exit_code) from None
    return "data: " + summary_line(splits, spec.data, resolve_model_dir(spec.model, spec.model_revision))


def _print_plan(spec, out: Path, recipe: Path) -> None:
    from compress.models import resolve_model_dir

    summary = _data_summary(spec, recipe)
    run_dir = out / spec.name
    console.print(f"[bold]{spec.name}[/] ({spec.task})")
    console.print(f"model: {spec.model} -> {resolve_model_dir(spec.model, spec.model_revision)}")
    console.print(summary, highlight=False)
    artifact = "torch model"
    for i, stage in enumerate(spec.stages):
        artifact = stage.produces.description.removeprefix("a ").removeprefix("an ")
        options = ", ".join(f"{k}={v}" for k, v in stage.model_dump(exclude={"kind"}).items())
        console.print(f"  {i + 1:02d}. {stage.kind:<14} -> {artifact:<12} {run_dir / f'{i + 1:02d}-{stage.kind}'}")
        console.print(f"      {options}", style="dim", highlight=False)
    console.print(f"manifest: {run_dir / 'manifest.json'}")


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    offline: bool = typer.Option(False, "--offline", help=OFFLINE_HELP),
) -> None:
    """Check a recipe (fields, stage order, model, and the data exactly as a run loads it) without running it."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    _need_training("validate")
    spec = _load(recipe)
    summary = _data_summary(spec, recipe)
    _warn_slow_settings(spec, recipe)
    console.print(f"{recipe}: ok ({len(spec.stages)} stages: {' -> '.join(s.kind for s in spec.stages)})")
    console.print(summary, highlight=False)
    from compress.plugins import listing

    for line in listing():  # installed plugins, validated with the recipe
        console.print(f"plugin: {line}", highlight=False)


@app.command()
def schema(bench: bool = typer.Option(False, "--bench", help="The bench spec's schema instead.")) -> None:
    """Print the recipe (or bench spec) JSON schema, for editor completion and validation."""
    _need_training("schema")
    try:
        if bench:
            from compress.bench.spec import bench_spec_json_schema as json_schema
        else:
            from compress.recipe import recipe_json_schema as json_schema
        schema = json_schema()
    except CompressError as e:  # a broken plugin
        raise _fail(str(e), e.exit_code) from None
    sys.stdout.write(json.dumps(schema, indent=2) + "\n")


# ---------------------------------------------------------------------------- benchmarks


@app.command()
def bench(
    spec: Path = typer.Argument(..., help="Bench spec YAML file."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default: runs/bench/<spec name>)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP + " No per-cell lines."),
) -> None:
    """Measure artifacts side by side: results.jsonl, results.csv, results.md, pareto.png."""
    _setup(verbose, quiet=quiet)
    _need_training("bench")
    from compress.bench.plan import build_plan, resolve_models
    from compress.bench.spec import BenchSpecError, load_bench_spec

    try:  # every input error surfaces here, before any cell runs
        settings = load_bench_spec(spec)
        models = resolve_models(settings, str(spec))
        build_plan(models, settings, str(spec))
        if settings.data is not None:  # the data contract, before any cell runs
            from compress.data import load_splits

            try:
                load_splits(settings.data, settings.task)
            except CompressError as e:
                raise BenchSpecError(f"{spec}: data: {e}") from None
    except CompressError as e:
        raise _fail(str(e), e.exit_code) from None
    from compress.bench.runner import run_benchmark

    out_dir = out or Path("runs") / "bench" / settings.name
    try:
        rows = run_benchmark(models, settings, out_dir, str(spec), on_row=None if quiet else _print_row,
                             paths_from=spec.resolve().parent)
    except KeyboardInterrupt:
        raise _fail(f"interrupted (finished cells kept in {out_dir / 'results.jsonl'})", 130) from None
    console.print((out_dir / "results.md").read_text(encoding="utf-8"), highlight=False, markup=False)
    console.print(f"results: {out_dir}/results.jsonl, results.csv, results.md, pareto.png")
    if any(r["status"] == "failed" for r in rows):
        raise typer.Exit(1)


def _print_row(row: dict) -> None:
    if row["status"] == "ok":
        from compress.bench.report import metric_of

        name, value = metric_of(row)
        acc = f", {name} {value:.4f}" if value is not None else ""
        err_console.print(f"{row['model']} {row['target']} {row['shape']} t{row['threads']}: p50 {row['p50_ms']:.2f} ms, "
                          f"p99 {row['p99_ms']:.2f} ms, cv {row['cv']:.3f}{acc}", highlight=False)
    else:
        err_console.print(f"{row['model']} {row['target']} {row['shape']}: {row['status']}: {row.get('reason')}",
                          style="yellow", highlight=False)


@app.command()
def table(
    results: Path = typer.Argument(..., help="A results.jsonl written by compress bench."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to write results.csv/md and pareto.png (default: beside RESULTS)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows (with their speedups) as a JSON array instead of the Markdown table."),
) -> None:
    """Re-render the CSV, Markdown table and plot from a results.jsonl."""
    _need_training("table")
    from compress.bench.report import read_rows, with_speedups, write_reports

    if not results.is_file():
        raise _fail(f"{results}: results file not found", 2)
    rows = read_rows(results)
    if not rows:
        raise _fail(f"{results}: no result rows", 2)
    out_dir = out or results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_reports(rows, out_dir)
    if as_json:
        sys.stdout.write(json.dumps(with_speedups(rows), indent=2, ensure_ascii=False) + "\n")
        return
    console.print(paths["md"].read_text(encoding="utf-8"), highlight=False, markup=False)


@app.command()
def targets() -> None:
    """List the benchmark targets and whether each can run on this machine (and why not)."""
    from compress.bench.targets import target_report

    for name, description, reason in target_report():
        status = "[green]available[/]" if reason is None else f"[yellow]unavailable[/]: {reason}"
        console.print(f"{name:<11} {description:<42} {status}", highlight=False)
@app.command()
def predict(
    package: Path = typer.Argument(..., help="A package directory (the output of the package stage)."),
    texts: list[str] = typer.Argument(..., help='Texts (questions for a QA model, prompts for a causal LM); "-" reads one per line from stdin.'),
    pairs: list[str] | None = typer.Option(
        None, "--pair", help="The second text of each pair (NLI, paraphrase) or the context of each question (QA): "
                             "repeat once per text, in order."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Texts per batch (default: 32; "
                                                                            "causal-lm prompts: 8)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text, for every task (JSON Lines)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="causal-lm: tokens to generate at most."),
    chat: bool = typer.Option(False, "--chat", help="causal-lm: apply the chat template (needs jinja2)."),
    sample: bool = typer.Option(False, "--sample", help="causal-lm: sample (default: greedy)."),
    temperature: float = typer.Option(1.0, "--temperature", help="causal-lm, --sample: softmax temperature."),
    top_k: int | None = typer.Option(None, "--top-k", help="causal-lm, --sample: keep the k likeliest tokens."),
    top_p: float | None = typer.Option(None, "--top-p", help="causal-lm, --sample: nucleus probability mass."),
    seed: int | None = typer.Option(None, "--seed", help="causal-lm, --sample: random seed."),
    stop: list[str] | None = typer.Option(None, "--stop", help="causal-lm: end a text at this string (repeatable)."),
) -> None:
    """Run a packaged model on texts (light runtime: no torch, no transformers). Classification prints
    label, score and text per line; other tasks (and --json) print one JSON object per text; a
    causal LM continues each text (a prompt) and prints {prompt, text, token counts, finish_reason}."""
    import warnings

    from compress.runtime import Predictor

    if "-" in texts:  # stdin lines take the place of the "-"
        lines = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [t for arg in texts for t in (lines if arg == "-" else [arg])]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor = Predictor.load(package)
            if predictor.decoder is not None:
                if pairs:
                    raise CompressError("--pair: a causal-lm package takes prompts only")
                results = predictor.generate(texts, max_new_tokens=max_new_tokens, do_sample=sample,
                                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                             stop=stop or (), chat=chat, batch_size=batch_size)
            else:
                results = predictor.predict(texts, pairs or None, batch_size=batch_size or 32)
    except CompressError as e:
        raise _fail(str(e), e.exit_code) from None
    for w in caught:
        err_console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False)
    for text, r in zip(texts, results):
        if "label" in r and not as_json:
            sys.stdout.write(f"{r['label']}\t{r['score']:.4f}\t{text}\n")
        elif predictor.decoder is not None:  # "text" is the generated text: the input is the prompt
            sys.stdout.write(json.dumps({"prompt": text, **r}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(json.dumps({"text": text, **r}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    app()
