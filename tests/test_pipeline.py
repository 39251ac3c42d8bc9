"""The quickstart recipe end to end, in tiny form: the shipped recipe's stages on a
2-layer model and 64 Rotten Tomatoes snippets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from compress.manifest import Manifest
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from compress.report import ledger_rows, markdown_summary

QUICKSTART = Path(__file__).parents[1] / "recipes" / "quickstart.yaml"


def tiny_quickstart(model_dir: Path):
    recipe = load_recipe(QUICKSTART)
    data = recipe.data.model_copy(update={"max_train_samples": 64, "max_eval_samples": 48, "max_length": 32})
    stages = [recipe.stages[0].model_copy(update={"epochs": 1, "batch_size": 16}), *recipe.stages[1:]]
    measure = recipe.measure.model_copy(update={"threads": 1, "latency_iterations": 5, "warmup": 1})
    return recipe.model_copy(update={"model": str(model_dir), "data": data, "stages": stages, "measure": measure})


def test_quickstart_in_tiny_form(tmp_path, tiny_base_dir):
    recipe = tiny_quickstart(tiny_base_dir)
    run_dir = run_recipe(recipe, tmp_path).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    names = ["01-finetune", "02-export_onnx", "03-optimize_onnx", "04-ptq", "05-package"]
    assert [s["name"] for s in manifest["stages"]] == names
    assert manifest["final_artifact"] == {"kind": "onnx", "path": "05-package"}
    assert manifest["data"]["eval"]["size"] == 48 and manifest["data"]["seed"] == 13
    assert manifest["environment"]["packages"]["onnxruntime"]
    assert (run_dir / "recipe.resolved.yaml").is_file()
    split = json.loads((run_dir / "data_split.json").read_text())
    assert len(split["eval_rows"]) == 48 and not set(split["eval_rows"]) & set(split["train_rows"])

    rows = ledger_rows(Manifest.read(run_dir), run_dir)
    assert [r["stage"] for r in rows] == names
    for r in rows:  # every stage measured on the same eval split, with size, params, latency
        assert r["examples"] == 48 and 0 <= r["accuracy"] <= 1
        assert r["size_bytes"] > 0 and r["parameters"] > 0 and r["wall_seconds"] >= 0
        assert r["latency"]["p50_ms"] > 0 and r["latency"]["threads"] == 1
    # the fp32 export and fusion do not change predictions
    assert rows[1]["accuracy"] == rows[0]["accuracy"] == rows[2]["accuracy"]
    assert rows[3]["size_bytes"] < rows[2]["size_bytes"]
    assert rows[4]["accuracy"] == rows[3]["accuracy"]  # the package ships the INT8 model unchanged
    assert (run_dir / "05-package" / "deploy.json").is_file()
    # each stage's labels against its input's, example by example (a base model's input is not measured)
    assert "labels_vs_input" not in rows[0] and all(len(r["predictions"]) == 48 for r in rows)
    for r in (rows[1], rows[2], rows[4]):  # export, fusion and packaging keep every label
        assert r["labels_vs_input"] == {"examples": 48, "agreement": 1.0, "only_reference_right": 0,
                                        "only_model_right": 0, "mcnemar_p": 1.0}
    table = markdown_summary(run_dir)
    assert table.count("\n| 0") == 5 and "p50 ms (b1)" in table
    assert "labels vs input |" in table and table.count("100.0%, p 1.00") >= 3


def test_validate_path_does_not_import_torch():
    code = (
        "import sys; from compress.recipe import load_recipe; "
        f"load_recipe({str(QUICKSTART)!r}); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'nncf') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quickstart_recipe_for_real(tmp_path):
    """The shipped quickstart as is, on the real packaged model and data: what `make run`
    does. Part of `make test` (and so of CI): a few minutes on 2 cores."""
    run_dir = run_recipe(load_recipe(QUICKSTART), tmp_path).run_dir
    manifest = Manifest.read(run_dir)
    assert manifest.status == "completed" and [e.kind for e in manifest.done_stages()] == [
        "finetune", "export_onnx", "optimize_onnx", "ptq", "package"]
    rows = ledger_rows(manifest, run_dir)
    assert rows[0]["accuracy"] > 0.75  # the fine-tuned MiniLM: 0.8095 on the 1,281 held-out snippets
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] - 0.02  # INT8 within the recipe's budget and then some
    assert (run_dir / "05-package" / "deploy.json").is_file()
