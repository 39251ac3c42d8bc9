"""Bad inputs through the CLI: one line naming the file and the field or row, exit 2,
and nothing that was already written is lost."""

from __future__ import annotations

import errno
import json
import re

import pytest
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import make_sentences, tiny_recipe_text, write_csv

runner = CliRunner()


def run_cli(recipe_dir, text: str, out):
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result, errors


def corrupt_weights(model_dir):
    weights = next(model_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])


def bad_label_in_eval(recipe_dir):
    write_csv(recipe_dir / "eval.csv", make_sentences(6) + [("so so", "meh")])


def not_utf8(recipe_dir):
    (recipe_dir / "reviews.csv").write_bytes(b"text,label\ngood film,pos\n\xff\xfe bad,neg\n")


def missing_column_row(recipe_dir):
    (recipe_dir / "reviews.csv").write_text("text,label\ngood film,pos\nbad film,neg,extra\n")


CASES = {
    "corrupt model weights": (
        lambda d: corrupt_weights(d / "model"), {},
        r"cannot load the model in .*model",
    ),
    "label outside the label set in eval file": (
        bad_label_in_eval, {"extra": "  eval: eval.csv\n"},
        r"eval\.csv: line 8: label 'meh' is not one of the labels \['neg', 'pos'\]",
    ),
    "data not utf-8": (not_utf8, {}, r"reviews\.csv: not UTF-8 text \(invalid byte at offset 25\)"),
    "row with too many fields": (missing_column_row, {}, r"reviews\.csv: line 3: more fields than the header has"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(recipe_dir, tmp_path, case):
    prepare, opts, pattern = CASES[case]
    prepare(recipe_dir)
    text = tiny_recipe_text(stages="\n  - kind: finetune\n    max_steps: 1\n")
    if opts.get("extra"):
        text = text.replace("  eval_fraction: 0.25\n", opts["extra"])
    result, errors = run_cli(recipe_dir, text, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert len(errors) == 1, result.output
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in result.output


def test_disk_full_keeps_earlier_stages(recipe_dir, tmp_path, monkeypatch):
    from compress.stages.export_onnx import ExportONNXStage

    def no_space(self, model, ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.artifact_dir / "model.onnx"))

    monkeypatch.setattr(ExportONNXStage, "run", no_space)
    text = tiny_recipe_text(stages="\n  - kind: finetune\n    max_steps: 1\n  - kind: export_onnx\n")
    result, errors = run_cli(recipe_dir, text, tmp_path / "out")
    assert result.exit_code == 2
    assert len(errors) == 1 and "No space left on device" in errors[0] and "model.onnx" in errors[0]
    run_dir = tmp_path / "out" / "tiny"
    assert (run_dir / "01-finetune" / "model.safetensors").is_file()
    assert not (run_dir / "02-export_onnx").exists() and not list(run_dir.glob(".*.partial"))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"


def test_second_run_on_a_locked_directory_is_refused(recipe_dir, tmp_path):
    from compress.resume import RunLock

    run_dir = tmp_path / "out" / "tiny"
    with RunLock(run_dir):  # this test process stands in for a live run holding the lock
        result, errors = run_cli(recipe_dir, tiny_recipe_text(), tmp_path / "out")
    assert result.exit_code == 2
    assert len(errors) == 1 and "is in use by another compress run" in errors[0]


def test_trust_remote_code_prints_a_warning(recipe_dir, tmp_path):
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text() + "trust_remote_code: true\n")
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0
    assert "warning:" in result.output and "trust_remote_code is on" in result.output
