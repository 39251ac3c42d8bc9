from __future__ import annotations

import json

from typer.testing import CliRunner

from compress.cli import app
from compress.stages import STAGE_KINDS
from tests.conftest import tiny_recipe_text

runner = CliRunner()


def write(recipe_dir, text):
    path = recipe_dir / "recipe.yaml"
    path.write_text(text)
    return path


def test_validate_ok(recipe_dir):
    result = runner.invoke(app, ["validate", str(write(recipe_dir, tiny_recipe_text()))])
    assert result.exit_code == 0, result.output
    assert "ok (4 stages: finetune -> export_onnx -> optimize_onnx -> ptq)" in result.output


def test_validate_error_is_one_line_and_exit_2(recipe_dir):
    path = write(recipe_dir, tiny_recipe_text(stages="\n  - kind: finetune\n    batch_size: 0\n"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: stages[0].batch_size: Input should be greater than or equal to 1")
    assert "Traceback" not in result.output


def test_schema_is_json_with_stage_kinds():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert set(schema["required"]) >= {"name", "model", "task", "data", "stages"}
    kinds = {d["properties"]["kind"]["const"] for d in schema["$defs"].values() if "kind" in d.get("properties", {})}
    assert kinds == set(STAGE_KINDS)
    assert {"finetune", "export_onnx", "optimize_onnx", "ptq", "build_engine"} <= kinds


def test_dry_run_prints_plan_without_running(recipe_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write(recipe_dir, tiny_recipe_text())), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "train 60 / eval 20 examples" in result.output
    assert "04-ptq" in result.output and "manifest.json" in result.output
    assert not out.exists()


def test_run_writes_summary(recipe_dir, tmp_path):
    stages = "\n  - kind: finetune\n    max_steps: 2\n    batch_size: 8\n  - kind: export_onnx\n"
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write(recipe_dir, tiny_recipe_text(stages=stages))), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy ledger" in result.output and "02-export_onnx" in result.output
    summary = (out / "tiny" / "summary.md").read_text()
    assert "| 01-finetune | torch |" in summary and "| 02-export_onnx | onnx |" in summary


def test_failing_stage_exits_1_with_one_line(recipe_dir, tmp_path, monkeypatch):
    """A candidate whose logits are off by 0.5 fails export_onnx's parity check: exit 1,
    one error line, the completed stage kept, the run marked failed."""
    import compress.parity

    real = compress.parity.predict_outputs

    def shifted(session, encoded, batch_size, desc=None):
        outputs = real(session, encoded, batch_size, desc)
        return [o + 0.5 for o in outputs] if desc == "parity (candidate)" else outputs

    monkeypatch.setattr(compress.parity, "predict_outputs", shifted)
    stages = "\n  - kind: finetune\n    max_steps: 1\n  - kind: export_onnx\n    parity_samples: 4\n"
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write(recipe_dir, tiny_recipe_text(stages=stages))), "--out", str(out)])
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "parity check failed: max |logit difference| 0.5 > atol 0.0001" in errors[0]
    assert "completed stages kept" in errors[0]
    assert (out / "tiny" / "01-finetune" / "model.safetensors").is_file()
    assert manifest["status"] == "failed" and not (out / "tiny" / "02-export_onnx").exists()


def test_missing_data_exits_2(recipe_dir):
    result = runner.invoke(app, ["run", str(write(recipe_dir, tiny_recipe_text(train="gone.csv")))])
    assert result.exit_code == 2
    assert "data.train: data file not found" in result.output


def test_version_and_completion():
    from compress import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"compress {__version__}"
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_bench_spec_schema_takes_models_as_paths_or_mappings():
    result = runner.invoke(app, ["schema", "--bench"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "models" in schema["required"] and "targets" in schema["properties"]
    kinds = [item.get("type") or item.get("$ref") for item in schema["properties"]["models"]["items"]["anyOf"]]
    assert kinds == ["string", "#/$defs/ModelRef"]
    assert json.loads(runner.invoke(app, ["schema"]).stdout)["title"] == "Recipe"


def test_quiet_run_prints_the_table_without_progress(recipe_dir, tmp_path):
    stages = "\n  - kind: finetune\n    max_steps: 2\n    batch_size: 8\n  - kind: export_onnx\n"
    path = write(recipe_dir, tiny_recipe_text(stages=stages))
    out = str(tmp_path / "out")
    loud = runner.invoke(app, ["run", str(path), "--out", out])
    quiet = runner.invoke(app, ["run", str(path), "--out", out, "--force", "-q"])
    assert loud.exit_code == quiet.exit_code == 0, quiet.output
    assert "stage 1/2: finetune" in loud.output and "stage 1/2" not in quiet.output
    assert "02-export_onnx" in quiet.output  # the ledger still prints
    both = runner.invoke(app, ["run", str(path), "-v", "-q"])
    assert both.exit_code == 2 and "choose one" in both.output


def test_table_json_prints_rows_with_speedups(tmp_path):
    from tests.bench.test_report import row

    rows = [row("run/01-finetune", "torch-cpu", 12.0, role="baseline", accuracy=0.8),
            row("run/03-ptq", "torch-cpu", 4.0, accuracy=0.79)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["table", str(path), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [r["model"] for r in printed] == ["run/01-finetune", "run/03-ptq"]
    assert printed[1]["speedup_vs_baseline"] == 3.0
