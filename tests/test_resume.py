"""Runs that survive: reuse of unchanged stages, --force / --from, integrity checks,
the run lock, and a kill -9 in the middle of training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.errors import CompressError
from compress.pipeline import run_recipe
from compress.recipe import load_recipe
from compress.resume import (
    ArtifactIntegrityError,
    RunLock,
    resolve_from_stage,
    verify_artifact,
)
from tests.conftest import tiny_recipe_text

STAGES = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n"


def setup_recipe(recipe_dir: Path, model_dir: Path, stages: str = STAGES) -> Path:
    import shutil

    shutil.rmtree(recipe_dir / "model", ignore_errors=True)
    shutil.copytree(model_dir, recipe_dir / "model")
    path = recipe_dir / "recipe.yaml"
    path.write_text(tiny_recipe_text(stages=stages))
    return path


def statuses(run_dir: Path) -> list[str]:
    return [s["status"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]


def mtime(run_dir: Path, name: str) -> int:
    return (run_dir / name / "stage.json").stat().st_mtime_ns


def test_rerun_reuses_unchanged_stages_and_redoes_changed_ones(recipe_dir, tiny_classifier_dir, tmp_path):
    path = setup_recipe(recipe_dir, tiny_classifier_dir)
    out = tmp_path / "out"
    run_dir = run_recipe(load_recipe(path), out).run_dir
    first = {n: mtime(run_dir, n) for n in ("01-export_onnx", "02-optimize_onnx")}

    run_recipe(load_recipe(path), out)
    assert statuses(run_dir) == ["reused", "reused"]
    assert {n: mtime(run_dir, n) for n in first} == first

    path.write_text(tiny_recipe_text(stages=STAGES + "    atol: 0.01\n"))  # change only stage 2
    run_recipe(load_recipe(path), out)
    assert statuses(run_dir) == ["reused", "completed"]
    assert mtime(run_dir, "01-export_onnx") == first["01-export_onnx"]

    run_recipe(load_recipe(path), out, force=True)
    assert statuses(run_dir) == ["completed", "completed"]

    recipe = load_recipe(path)
    run_recipe(recipe, out, from_index=resolve_from_stage(recipe.stages, "optimize_onnx"))
    assert statuses(run_dir) == ["reused", "completed"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"


def test_from_stage_names():
    from compress.stages import ExportONNXStage, OptimizeONNXStage

    stages = [ExportONNXStage(kind="export_onnx"), OptimizeONNXStage(kind="optimize_onnx")]
    assert [resolve_from_stage(stages, v) for v in ("2", "02", "02-optimize_onnx", "optimize_onnx")] == [1] * 4
    with pytest.raises(CompressError, match=r"--from 'ptq': no such stage \(stages: 01-export_onnx, 02-optimize_onnx\)"):
        resolve_from_stage(stages, "ptq")


def test_corrupted_artifact_is_refused_by_name(recipe_dir, tiny_classifier_dir, tmp_path):
    path = setup_recipe(recipe_dir, tiny_classifier_dir)
    run_dir = run_recipe(load_recipe(path), tmp_path).run_dir
    onnx_file = run_dir / "01-export_onnx" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"01-export_onnx: artifact files changed since the stage wrote"):
        verify_artifact(run_dir / "01-export_onnx")
    with pytest.raises(ArtifactIntegrityError, match="01-export_onnx"):
        run_recipe(load_recipe(path), tmp_path)
    # a forced rerun rebuilds it
    run_recipe(load_recipe(path), tmp_path, force=True)
    verify_artifact(run_dir / "01-export_onnx")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from compress.resume import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_live_lock_refuses_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    """The lock is the OS's: a second run is refused naming the holder; kill -9 of the holder
    frees it (no PID guessing), and the next run says it took over."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CompressError, match=rf"in use by another compress run \(pid {holder.pid} on host "):
            with RunLock(run_dir):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((run_dir / ".lock.json").read_text())["pid"] == holder.pid  # left behind by the kill
    with caplog.at_level("WARNING", logger="compress.resume"), RunLock(run_dir):
        assert json.loads((run_dir / ".lock.json").read_text())["pid"] == os.getpid()
    assert f"from a run that is no longer running (pid {holder.pid}" in caplog.text
    assert not (run_dir / ".lock.json").exists()
    with RunLock(run_dir):  # released: taken again without a warning
        pass


def test_a_lock_whose_holder_has_not_written_its_name_is_still_held(tmp_path):
    """Holding is what counts, not the owner file: the old PID-file lock deleted a lock read
    before its JSON was written, so two runs could both start."""
    from filelock import FileLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(run_dir / ".lock", timeout=0):  # holds it, has not written .lock.json
        with pytest.raises(CompressError, match="holder not yet recorded"):
            with RunLock(run_dir):
                pass


def test_kill_9_mid_training_then_resume_matches_uninterrupted_run(recipe_dir, tiny_base_dir, tmp_path):
    stages = """
  - kind: finetune
    max_steps: 400
    batch_size: 8
    learning_rate: 1.0e-3
  - kind: export_onnx
"""
    path = setup_recipe(recipe_dir, tiny_base_dir, stages)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "compress.cli", "run", str(path), "--out"]

    killed_out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed_out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = killed_out / "tiny" / ".01-finetune.partial"
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the 400 training steps
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = killed_out / "tiny"
    assert not (run_dir / "01-finetune").exists()  # nothing that looks complete
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    assert (run_dir / ".lock.json").exists()  # its holder is dead: the next run takes over

    resumed = subprocess.run([*cmd, str(killed_out)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = subprocess.run([*cmd, str(tmp_path / "clean")], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    def record(out: Path, name: str) -> dict:
        return json.loads((out / "tiny" / name / "stage.json").read_text())

    for name in ("01-finetune", "02-export_onnx"):
        a, b = record(killed_out, name), record(tmp_path / "clean", name)
        assert a["accuracy"] == b["accuracy"]
        assert a["fingerprint"] == b["fingerprint"]
    assert record(killed_out, "01-finetune")["training"]["final_loss"] == record(tmp_path / "clean", "01-finetune")["training"]["final_loss"]
    assert not list(run_dir.glob(".*.partial")) and not (run_dir / ".lock.json").exists()


def test_kill_9_after_a_training_checkpoint_resumes_mid_stage(recipe_dir, tiny_base_dir, tmp_path):
    """checkpoint_every: a rerun after kill -9 resumes from the last checkpoint (not step 0)
    and ends with exactly the weights and accuracy of an uninterrupted run."""
    stages = """
  - kind: finetune
    max_steps: 240
    batch_size: 8
    learning_rate: 1.0e-3
    checkpoint_every: 40
"""
    path = setup_recipe(recipe_dir, tiny_base_dir, stages)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "compress.cli", "run", str(path), "--out"]

    killed_out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed_out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed_out / "tiny" / ".01-finetune.partial" / "checkpoint" / "state.json"
    deadline = time.time() + 180
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before a checkpoint could be caught"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = json.loads(state.read_text())["step"]
    assert saved_step % 40 == 0 and 0 < saved_step < 240
    assert not (killed_out / "tiny" / "01-finetune").exists()

    resumed = subprocess.run([*cmd, str(killed_out)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    resumed_log = " ".join(resumed.stderr.split())  # rich may wrap long log lines
    assert "keeping the training checkpoint" in resumed_log
    resumed_at = int(resumed_log.split("finetune: resuming from step ")[1].split()[0])
    assert resumed_at >= saved_step  # the newest checkpoint (a later one may land before the kill)
    clean = subprocess.run([*cmd, str(tmp_path / "clean")], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert "resuming" not in clean.stderr

    a = json.loads((killed_out / "tiny" / "01-finetune" / "stage.json").read_text())
    b = json.loads((tmp_path / "clean" / "tiny" / "01-finetune" / "stage.json").read_text())
    assert a["training"]["resumed_from_step"] == resumed_at and b["training"]["resumed_from_step"] is None
    assert a["training"]["steps"] == b["training"]["steps"] == 240
    assert a["training"]["final_loss"] == b["training"]["final_loss"]
    assert a["accuracy"] == b["accuracy"]
    assert a["artifact_sha256"] == b["artifact_sha256"]  # bit-identical weights, no checkpoint left inside
    assert not (killed_out / "tiny" / "01-finetune" / "checkpoint").exists()


def test_a_failure_after_training_keeps_the_finished_training(recipe_dir, tiny_base_dir, tmp_path, monkeypatch, caplog):
    """With checkpoint_every, the finished training state stays until the stage completes: a
    stage that fails while measuring its trained model resumes at the last step on the rerun
    instead of training again."""
    import compress.pipeline

    stages = "\n  - kind: finetune\n    max_steps: 6\n    batch_size: 8\n    checkpoint_every: 4\n"
    path = setup_recipe(recipe_dir, tiny_base_dir, stages)
    real_measure = compress.pipeline.measure_artifact

    def failing_measure(*args, **kwargs):
        raise RuntimeError("measurement broke")

    monkeypatch.setattr(compress.pipeline, "measure_artifact", failing_measure)
    with pytest.raises(RuntimeError, match="measurement broke"):
        run_recipe(load_recipe(path), tmp_path, recipe_path=path)
    state = tmp_path / "tiny" / ".01-finetune.partial" / "checkpoint" / "state.json"
    assert json.loads(state.read_text())["step"] == 6

    monkeypatch.setattr(compress.pipeline, "measure_artifact", real_measure)
    with caplog.at_level("INFO", logger="compress"):
        run_dir = run_recipe(load_recipe(path), tmp_path, recipe_path=path).run_dir
    assert "finetune: resuming from step 6" in caplog.text
    record = json.loads((run_dir / "01-finetune" / "stage.json").read_text())
    assert record["training"]["steps"] == 6 and record["training"]["resumed_from_step"] == 6
    assert not (run_dir / "01-finetune" / "checkpoint").exists() and not list(run_dir.glob(".*.partial"))


def test_the_recipes_metric_is_part_of_every_stage_fingerprint(recipe_dir):
    """keep_best and the budgets choose by the metric: another metric may make other artifacts."""
    from compress.recipe import load_recipe
    from compress.resume import stage_fingerprint

    split = {"seed": 7, "label_names": ["neg", "pos"], "train": {}, "eval": {}, "source_sha256": {}}
    (recipe_dir / "a.yaml").write_text(tiny_recipe_text())
    (recipe_dir / "b.yaml").write_text(tiny_recipe_text().replace("task: text-classification",
                                                                  "task: text-classification\nmetric: macro_f1"))
    a, b = load_recipe(recipe_dir / "a.yaml"), load_recipe(recipe_dir / "b.yaml")
    assert (a.metric_name, b.metric_name) == ("accuracy", "macro_f1")
    assert stage_fingerprint(a, 0, "x", split) != stage_fingerprint(b, 0, "x", split)
    assert stage_fingerprint(a, 0, "x", split) == stage_fingerprint(load_recipe(recipe_dir / "a.yaml"), 0, "x", split)
