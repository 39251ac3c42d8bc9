"""Run a recipe on the tiny model and data, returning the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from compress.errors import RecipeError
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from tests.conftest import make_sentences, tiny_recipe_text, write_csv


def run_tiny(tmp: Path, model_dir: Path, stages: str, **recipe_kw) -> Path:
    if not (tmp / "model").exists():
        shutil.copytree(model_dir, tmp / "model")
    write_csv(tmp / "reviews.csv", make_sentences(80))
    path = tmp / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages=stages, **recipe_kw))
    ctx = run_recipe(load_recipe(path), tmp / "runs", recipe_path=path)
    return ctx.run_dir


def stage_json(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name / "stage.json").read_text())


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def validate_warnings(path: Path) -> list[str]:
    """`compress validate PATH` (which must pass): the lines it prints as warnings."""
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("warning:")]


def recipe_error(recipe_dir: Path, text: str) -> str:
    """Load `text` as recipe.yaml, expecting the loader to refuse it; the message is one line."""
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


RECIPES = Path(__file__).parents[1] / "recipes"
TINY_DATA = {"train": "reviews.csv", "eval_fraction": 0.25, "seed": 7, "max_length": 32}
TINY_STAGE = {  # per stage kind: what shrinks so a shipped recipe runs in seconds
    "finetune": {"epochs": 1, "max_steps": 2, "batch_size": 8},
    "distill": {"epochs": 1, "max_steps": 2, "batch_size": 8},
    "prune": {"epochs": 1, "max_steps": 2, "batch_size": 8, "importance_batches": 2},
    "qat": {"epochs": 1, "max_steps": 2, "batch_size": 8, "calibration_samples": 16},
    "ptq": {"calibration_samples": 16, "budget_samples": 16},
}


def run_shipped_recipe(name: str, tmp: Path, model_dir: Path, data: dict | None = None,
                       stage_overrides: dict | None = None) -> Path:
    """Run recipes/NAME in tiny form: the given model, tiny data (80 synthetic snippets
    unless `data` is given), TINY_STAGE (then `stage_overrides`) per stage kind, a quick
    benchmark block; only fields a stage already sets are shrunk. Returns the run directory."""
    raw = yaml.safe_load((RECIPES / name).read_text())
    write_csv(tmp / "reviews.csv", make_sentences(80))
    raw["model"] = str(model_dir)
    raw["data"] = data or TINY_DATA
    raw["measure"] = {"threads": 1, "latency_iterations": 5, "warmup": 1}
    if raw.get("benchmark"):
        raw["benchmark"].update(warmup=1, min_iterations=3, min_seconds=0, threads=[1],
                                shapes={"batch_sizes": [1, 4], "real": True})
    for stage in raw["stages"]:
        shrink = TINY_STAGE.get(stage["kind"], {}) | (stage_overrides or {}).get(stage["kind"], {})
        has_schedule = "epochs" in stage or "max_steps" in stage
        stage.update({k: v for k, v in shrink.items()
                      if k in stage or (has_schedule and k in ("epochs", "max_steps", "batch_size"))})
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return run_recipe(load_recipe(path), tmp / "runs", recipe_path=path).run_dir


def add_to_hub_cache(cache: Path, repo_id: str, model_dir: Path, commit: str | None = None,
                     ref: str = "main", repo_type: str = "model") -> str:
    """Put a saved checkpoint (or a dataset repository's files) into a Hugging Face Hub cache
    as huggingface_hub lays it out ({models,datasets}--owner--name/{blobs, refs/<ref>,
    snapshots/<commit>/<file> -> ../../blobs/<hash>}), so a Hub id resolves offline; returns
    the commit hash."""
    import hashlib
    import os

    repo = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    commit = commit or hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snapshot = repo / "snapshots" / commit
    for f in files:
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / blob)
        link = snapshot / f.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    return commit


def toy_budget_problem():
    """A sensitivity search in miniature: 4 labelled examples and three 'nodes' a, b, c whose
    quantization flips 1, 3 and 0 predictions. Returns (logits_with, reference, score, harm: editable) for
    compress.stages.ptq.budget.fit_accuracy_budget."""
    import numpy as np

    from compress.stages.ptq.budget import task_score
    from compress.tasks import get_task

    labels = np.array([0, 1, 0, 1])
    score = task_score(get_task("text-classification"), [{}] * 4, list(labels))
    reference = list(np.eye(2)[labels])
    harm = {"a": 1, "b": 3, "c": 0}  # predictions each quantized node flips

    def logits_with(exclude, only):
        flips = sum(h for n, h in harm.items() if n not in exclude and (only is None or n in only))
        return [row[::-1] if i < flips else row for i, row in enumerate(reference)]

    return logits_with, reference, score, harm


def run_tiny_lm(tmp: Path, model_dir: Path, stages: str, paragraphs: int, eval_fraction: float,
                latency_iterations: int = 3) -> Path:
    """A causal-lm recipe on a copy of the tiny llama and a .txt corpus of `paragraphs`
    documents, run in tmp; returns the run directory. `stages` is the YAML list's body."""
    from tests.conftest import make_paragraphs

    shutil.copytree(model_dir, tmp / "model")
    (tmp / "corpus.txt").write_text("\n\n".join(make_paragraphs(paragraphs)))
    (tmp / "recipe.yaml").write_text(f"""
name: tiny-lm
model: model
task: causal-lm
data: {{train: corpus.txt, eval_fraction: {eval_fraction}, seed: 3, max_length: 64}}
measure: {{threads: 1, latency_iterations: {latency_iterations}, warmup: 1, eval_batch_size: 8}}
stages:
{stages}""")
    return run_recipe(load_recipe(tmp / "recipe.yaml"), tmp / "runs").run_dir
