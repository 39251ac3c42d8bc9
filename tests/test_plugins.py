"""Plugins: a small distribution (a module and its *.dist-info with entry_points.txt, on the
PYTHONPATH of a subprocess) adds a stage kind and a metric through the `compress.stages` and
`compress.metrics` entry points; schema, validate and run take them like built-ins, and a
broken plugin is one line naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_sentences, tiny_recipe_text, write_csv

ROOT = Path(__file__).parents[1]

PLUGIN = '''
"""A compress plugin: the `annotate` stage kind and the `mean_confidence` metric."""
import shutil
from typing import Literal

import numpy as np
from pydantic import Field

from compress.artifacts import ONNXModel, copy_sidecar_files
from compress.stages.base import StageConfig


class AnnotateStage(StageConfig):
    kind: Literal["annotate"]
    note: str = Field(description="A note recorded in stage.json.")

    accepts = (ONNXModel,)
    produces = ONNXModel

    def run(self, model, ctx):
        copy_sidecar_files(model.path, ctx.artifact_dir)
        shutil.copy2(model.onnx_path, ctx.artifact_dir / "model.onnx")
        ctx.record(note=self.note)
        return ONNXModel(ctx.artifact_dir)


def mean_confidence(outputs, features, references):
    """The mean top softmax probability over the eval examples."""
    top = []
    for logits in outputs:
        e = np.exp(logits - logits.max())
        top.append(float((e / e.sum()).max()))
    return sum(top) / len(top)


mean_confidence.tasks = ("text-classification",)
'''

ENTRY_POINTS = """
[compress.stages]
annotate = compress_annotate:AnnotateStage

[compress.metrics]
mean_confidence = compress_annotate:mean_confidence
"""


def install_plugin(where: Path, module: str = PLUGIN, entry_points: str = ENTRY_POINTS) -> Path:
    """A plugin distribution as pip would lay it out in site-packages (--target)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "compress_annotate.py").write_text(module)
    info = where / "compress_annotate-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: compress-annotate\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return where


def compress_cli(plugin_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.fixture
def plugin_recipe(tmp_path, tiny_classifier_dir) -> Path:
    shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    stages = "\n  - kind: export_onnx\n  - kind: annotate\n    note: checked by hand\n"
    text = tiny_recipe_text(stages=stages).replace("task: text-classification\n",
                                                   "task: text-classification\nmetric: mean_confidence\n")
    (tmp_path / "recipe.yaml").write_text(text)
    return tmp_path / "recipe.yaml"


def test_a_plugin_stage_and_metric_run_like_builtins(plugin_recipe, tmp_path):
    plugin = install_plugin(tmp_path / "site")
    schema = compress_cli(plugin, "schema", cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    stages = json.loads(schema.stdout)["$defs"]
    assert stages["AnnotateStage"]["properties"]["note"]["description"] == "A note recorded in stage.json."
    assert "mean_confidence" in json.loads(schema.stdout)["properties"]["metric"]["description"]

    validated = compress_cli(plugin, "validate", str(plugin_recipe), cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "2 stages: export_onnx -> annotate" in validated.stdout
    assert ("plugin: stage annotate = compress_annotate:AnnotateStage (from compress-annotate 0.1)"
            in validated.stdout)
    assert "plugin: metric mean_confidence = compress_annotate:mean_confidence" in validated.stdout

    ran = compress_cli(plugin, "run", str(plugin_recipe), "--out", str(tmp_path / "runs"), "-q", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    run_dir = tmp_path / "runs" / "tiny"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metric"] == "mean_confidence"
    assert [s["name"] for s in manifest["stages"]] == ["01-export_onnx", "02-annotate"]
    for entry in manifest["stages"]:  # the plugin metric beside the task's own, for every stage
        assert 0.5 <= entry["metrics"]["mean_confidence"] <= 1 and 0 <= entry["metrics"]["accuracy"] <= 1
    record = json.loads((run_dir / "02-annotate" / "stage.json").read_text())
    assert record["note"] == "checked by hand"
    assert manifest["stages"][1]["metrics"] == manifest["stages"][0]["metrics"]  # the same graph
    assert "mean_confidence" in (run_dir / "summary.md").read_text()


def test_without_the_plugin_its_kind_and_metric_are_refused(plugin_recipe, tmp_path):
    result = compress_cli(tmp_path / "nothing", "validate", str(plugin_recipe), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{plugin_recipe}: stages[1].kind: unknown stage kind 'annotate'" in result.stderr
    plugin_recipe.write_text(plugin_recipe.read_text().replace("  - kind: annotate\n    note: checked by hand\n", ""))
    result = compress_cli(tmp_path / "nothing", "validate", str(plugin_recipe), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{plugin_recipe}: metric 'mean_confidence' is not a text-classification metric" in result.stderr


@pytest.mark.parametrize("module, entry_points, message", [
    (PLUGIN, "[compress.stages]\nannotate = compress_annotate:Missing\n",
     "plugin compress.stages 'annotate' = compress_annotate:Missing (from compress-annotate 0.1): cannot load it: "
     "AttributeError"),
    (PLUGIN, "[compress.stages]\nfinetune = compress_annotate:AnnotateStage\n",
     "its kind field must be Literal['finetune'], found 'annotate'"),
    (PLUGIN, "[compress.stages]\nannotate = compress_annotate:mean_confidence\n", "not a StageConfig subclass"),
    (PLUGIN.replace('"annotate"', '"finetune"'), "[compress.stages]\nfinetune = compress_annotate:AnnotateStage\n",
     "'finetune' is a built-in stage kind"),
])
def test_a_broken_stage_plugin_is_one_line_naming_it(plugin_recipe, tmp_path, module, entry_points, message):
    plugin = install_plugin(tmp_path / "site", module, entry_points)
    for args in (["validate", str(plugin_recipe)], ["schema"]):
        result = compress_cli(plugin, *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_metric_plugin_that_returns_no_number_is_named(plugin_recipe, tmp_path):
    module = PLUGIN.replace("return sum(top) / len(top)", "return 'high'")
    plugin = install_plugin(tmp_path / "site", module)
    result = compress_cli(plugin, "run", str(plugin_recipe), "--out", str(tmp_path / "runs"), "-q", cwd=tmp_path)
    assert result.returncode == 2
    assert "plugin compress.metrics 'mean_confidence'" in result.stderr and "returned 'high', not a finite number" \
        in result.stderr
