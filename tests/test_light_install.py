"""The base install is the runtime only: a Python environment that holds nothing but the base
distribution's dependencies (onnxruntime, tokenizers, numpy, typer, rich and what they pull in,
read from pyproject.toml and followed through the installed packages' metadata) plus the
compress package loads a package, predicts, cannot import torch, and `compress run` says in one
line what to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from compress.runtime import Predictor
from tests.decoders import tiny_decoder_package
from tests.helpers import run_tiny

ROOT = Path(__file__).parents[1]


def _base_distributions() -> list:
    """The installed distributions a base `pip install compress` pulls in: pyproject's
    dependencies and, recursively, theirs (markers evaluated, extras not followed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: dict[str, object] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} (a dependency of the base install) is not installed here")
        assert dist.version in req.specifier or not req.specifier or dist.version.split("+")[0] in req.specifier, \
            f"{req.name} {dist.version} is outside pyproject's range {req.specifier}"
        seen[key] = dist
        todo.extend(Requirement(r) for r in dist.requires or [])
    return list(seen.values())


def _runtime_only_env(where: Path) -> Path:
    """A venv without pip whose site-packages holds links to the base distributions' files
    and to this checkout's compress package, nothing else. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in _base_distributions():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "compress").symlink_to(ROOT / "compress")
    return python


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    return _runtime_only_env(tmp_path_factory.mktemp("light") / "venv")


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_classifier_dir) -> Path:
    run_dir = run_tiny(tmp_path_factory.mktemp("light-run"), tiny_classifier_dir,
                       "\n  - kind: export_onnx\n  - kind: package\n")
    return run_dir / "02-package"


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def _run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120,
                          env=_clean_env(), cwd=cwd or Path(python).parents[1])


def test_the_base_install_holds_no_training_stack(light_python):
    code = ("import importlib.util as u; "
            "print([m for m in ('torch', 'transformers', 'optimum', 'onnx', 'nncf', 'accelerate') if u.find_spec(m)])")
    result = _run(light_python, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    imported = _run(light_python, "-c", "import torch")
    assert imported.returncode != 0 and "No module named 'torch'" in imported.stderr


def test_predictor_loads_and_predicts_with_the_runtime_only(light_python, package):
    texts = ["a good film", "boring boring movie"]
    code = ("import json, sys, compress; "
            f"p = compress.load(sys.argv[1], threads=1); print(json.dumps(p.predict({texts!r}))); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = _run(light_python, "-c", code, str(package))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    here = Predictor.load(package, threads=1).predict(texts)
    light = json.loads(lines[0])
    assert [r["label"] for r in light] == [r["label"] for r in here]
    assert [r["score"] for r in light] == pytest.approx([r["score"] for r in here], abs=1e-5)
    assert lines[1] == "[]"


def test_the_api_names_the_extra_it_needs(light_python, tmp_path):
    code = ("import compress\ntry:\n    compress.run('recipe.yaml')\nexcept compress.errors.CompressError as e:\n"
            "    print(type(e).__name__, e)")
    result = _run(light_python, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MissingExtraError compress.run() needs the training stack")
    assert result.stdout.strip().endswith("pip install 'compress[train]'")


def test_cli_predict_works_and_training_commands_name_the_extra(light_python, package, tmp_path):
    predicted = _run(light_python, "-m", "compress", "predict", str(package), "a good film")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.endswith("\ta good film\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\n")
    for args in (["run", str(recipe)], ["validate", str(recipe)], ["bench", str(recipe)], ["schema"]):
        result = _run(light_python, "-m", "compress", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"compress {args[0]} needs the training stack" in lines[0]
        assert "pip install 'compress[train]'" in lines[0] and "torch" in lines[0]


@pytest.fixture(scope="module")
def decoder_package(tmp_path_factory, tiny_llama_dir) -> Path:
    return tiny_decoder_package(tmp_path_factory, tiny_llama_dir)


def test_generate_works_with_the_runtime_only(light_python, decoder_package):
    """A causal-lm package generates (greedy, sampled, stop strings) without torch or
    transformers; the same tokens as here. chat=True needs jinja2, which the base install
    lacks: one line says what to install."""
    prompts = ["the model", "a long time ago"]
    code = ("import json, sys, compress; from compress.generation import render_chat\n"
            f"p = compress.load(sys.argv[1], threads=1)\n"
            f"print(json.dumps([r['token_ids'] for r in p.generate({prompts!r}, max_new_tokens=8)]))\n"
            f"print(json.dumps([r['token_ids'] for r in p.generate({prompts!r}, max_new_tokens=8, do_sample=True, "
            "top_k=20, top_p=0.9, seed=1, stop=['zz'])]))\n"
            "print(sorted(m for m in ('torch', 'transformers', 'jinja2') if m in sys.modules))\n"
            "try:\n    render_chat('{{ messages }}', [], {})\nexcept ImportError as e:\n    print(e)\n")
    result = _run(light_python, "-c", code, str(decoder_package))
    assert result.returncode == 0, result.stderr
    greedy, sampled, modules, chat_error = result.stdout.strip().splitlines()
    here = Predictor.load(decoder_package, threads=1)
    assert json.loads(greedy) == [r["token_ids"] for r in here.generate(prompts, max_new_tokens=8)]
    assert json.loads(sampled) == [r["token_ids"] for r in here.generate(
        prompts, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, seed=1, stop=["zz"])]
    assert modules == "[]"
    assert chat_error.startswith("chat=True renders the package's chat template with jinja2") and \
        "pip install jinja2" in chat_error
    predicted = _run(light_python, "-m", "compress", "predict", str(decoder_package), "the model",
                     "--max-new-tokens", "5")
    assert predicted.returncode == 0, predicted.stderr
    row = json.loads(predicted.stdout)
    assert row["prompt"] == "the model" and row["new_tokens"] == 5
