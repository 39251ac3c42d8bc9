"""The light runtime (compress.runtime) on a tiny fp32 package: no training stack,
batching and padding, input validation, file integrity, and `compress predict`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.runtime import PackageError, Predictor, TruncationWarning
from tests.helpers import run_tiny

TEXTS = ["a good film", "the plot was dull and the acting was weak and tedious", "superb", "boring boring movie"]


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_classifier_dir) -> Path:
    run_dir = run_tiny(tmp_path_factory.mktemp("rt"), tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: package\n")
    return run_dir / "02-package"


@pytest.fixture(scope="module")
def predictor(package) -> Predictor:
    return Predictor.load(package, threads=1)


def test_importing_the_runtime_loads_no_training_stack():
    code = ("import sys, compress, compress.runtime; "
            "print(sorted(m for m in ('torch', 'transformers', 'optimum', 'nncf', 'pydantic', 'yaml', 'onnx') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_predict_returns_label_score_and_scores(predictor):
    out = predictor.predict(TEXTS)
    assert len(out) == len(TEXTS)
    for r in out:
        assert set(r) == {"label", "score", "scores"} and set(r["scores"]) == {"neg", "pos"}
        assert r["label"] == max(r["scores"], key=r["scores"].get) and r["score"] == r["scores"][r["label"]]
        assert abs(sum(r["scores"].values()) - 1) < 1e-9


def test_batching_and_padding_do_not_change_predictions(predictor):
    """fp32: one text at a time (no padding) and mixed-length batches must agree, in input order."""
    texts = TEXTS * 3
    alone = np.stack([predictor.predict_proba([t])[0] for t in texts])
    for batch_size in (2, 5, 32):
        np.testing.assert_allclose(predictor.predict_proba(texts, batch_size=batch_size), alone, atol=1e-5)


def test_token_ids_match_transformers(predictor, package):
    from compress.models import load_tokenizer

    reference = load_tokenizer(package)(TEXTS, truncation=True, max_length=predictor.max_length)
    ours = predictor.features(TEXTS)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert [e[name] for e in ours] == reference[name]


@pytest.mark.parametrize("texts, message", [
    ([], r"needs at least one text \(got an empty list\)"),
    ("a single string", "not a single string: wrap it in a list"),
    (["fine", None, "ok"], r"texts\[1\] is NoneType, not str"),
    (["fine", "ok", 3], r"texts\[2\] is int, not str"),
    (42, "takes a list of texts, got int"),
])
def test_bad_inputs_are_rejected_clearly(predictor, texts, message):
    with pytest.raises(PackageError, match=message):
        predictor.predict(texts)


def test_over_long_texts_are_truncated_with_a_warning(predictor):
    long = "good " * 200
    with pytest.warns(TruncationWarning, match=r"1 of 2 texts are longer than 32 tokens and were truncated \(texts\[1\]\)"):
        out = predictor.predict(["short", long])
    assert len(out) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is cut
        predictor.predict(["short"])
    assert len(predictor.features([long])[0]["input_ids"]) == 32


def _copy(package: Path, tmp_path: Path) -> Path:
    return shutil.copytree(package, tmp_path / "pkg")


@pytest.mark.parametrize("victim", ["model.onnx", "tokenizer.json", "triton/tiny/config.pbtxt"])
def test_corrupt_file_is_detected_on_load(package, tmp_path, victim):
    pkg = _copy(package, tmp_path)
    with (pkg / victim).open("r+b") as f:  # flip one byte in the middle
        f.seek((pkg / victim).stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(PackageError, match=rf"{victim}: sha256 mismatch .* corrupt or was changed after packaging"):
        Predictor.load(pkg)


def test_missing_file_and_missing_package(package, tmp_path):
    pkg = _copy(package, tmp_path)
    (pkg / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match=r"tokenizer\.json: file listed in deploy\.json is missing"):
        Predictor.load(pkg)
    (pkg / "deploy.json").unlink()
    with pytest.raises(PackageError, match="not a compress package"):
        Predictor.load(pkg)
    with pytest.raises(PackageError, match="package directory not found"):
        Predictor.load(tmp_path / "nowhere")


def test_unknown_package_format_is_refused(package, tmp_path):
    pkg = _copy(package, tmp_path)
    spec = json.loads((pkg / "deploy.json").read_text())
    spec["format"] = "compress-package/99"
    (pkg / "deploy.json").write_text(json.dumps(spec))
    with pytest.raises(PackageError, match="unsupported package format 'compress-package/99'"):
        Predictor.load(pkg)
    spec["format"] = "compress-package/1"
    del spec["labels"]
    (pkg / "deploy.json").write_text(json.dumps(spec))
    with pytest.raises(PackageError, match="deploy.json: missing labels"):
        Predictor.load(pkg)


runner = CliRunner()


def test_cli_predict_arguments_and_stdin(package, predictor):
    result = runner.invoke(app, ["predict", str(package), "a good film", "-"], input="superb\nboring boring movie\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["a good film", "superb", "boring boring movie"]
    expected = predictor.predict(["a good film", "superb", "boring boring movie"])
    assert [line.split("\t")[:2] for line in lines] == [[r["label"], f"{r['score']:.4f}"] for r in expected]


def test_cli_predict_errors_are_one_line(package, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), "text"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error:" in result.output and "package directory not found" in result.output
    result = runner.invoke(app, ["predict", str(package), "-"], input="")
    assert result.exit_code == 2 and "needs at least one text" in result.output


def test_cli_predict_json_lines(package, predictor):
    result = runner.invoke(app, ["predict", str(package), "a good film", "boring", "--json"])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = predictor.predict(["a good film", "boring"])
    assert [p["text"] for p in printed] == ["a good film", "boring"]
    assert [p["label"] for p in printed] == [e["label"] for e in expected]
    for p, e in zip(printed, expected):
        assert p["scores"] == pytest.approx(e["scores"]) and p["score"] == pytest.approx(e["score"])
