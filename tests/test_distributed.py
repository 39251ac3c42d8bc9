"""`compress run` under torchrun: 2 CPU processes on gloo drive the whole recipe through the
CLI. Rank 0 owns the run directory; both ranks train on their shards; the result equals the
single-process run with the same global batch; a failing rank stops the job by name; a kill
-9 mid-training resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_sentences, tiny_recipe_text, write_csv

ROOT = Path(__file__).parents[1]
GPU_REASON = "needs 2 CUDA GPUs (NCCL)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "COMPRESS_DIST_TIMEOUT": "120"}


def torchrun(nproc: int, *args: str) -> list[str]:
    """The launch line the README gives, on loopback."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]


@pytest.fixture
def no_dropout_model(tmp_path, tiny_classifier_dir) -> Path:
    """The tiny classifier without dropout: 2 ranks × batch 4 and 1 rank × batch 8 then see the
    same arithmetic, so the two runs' weights may differ only by float summation order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_classifier_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_classifier_dir).save_pretrained(tmp_path / "model")
    write_csv(tmp_path / "reviews.csv", make_sentences(80))
    return tmp_path / "model"


def write_recipe(tmp_path: Path, name: str, batch_size: int, max_steps: int = 4, extra: str = "",
                 after: str = "  - kind: export_onnx\n  - kind: ptq\n") -> Path:
    stages = (f"\n  - kind: finetune\n    max_steps: {max_steps}\n    batch_size: {batch_size}\n"
              f"    learning_rate: 1.0e-3\n{extra}{after}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(tiny_recipe_text(stages=stages).replace("name: tiny", f"name: {name}"))
    return path


def weights(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(stage_dir / "model.safetensors")


def test_torchrun_runs_the_whole_recipe_as_one_process_does(tmp_path, no_dropout_model):
    two = write_recipe(tmp_path, "two", batch_size=4)  # 2 processes × 4 = a global batch of 8
    one = write_recipe(tmp_path, "one", batch_size=8)
    out = tmp_path / "runs"
    proc = subprocess.run(torchrun(2, "-m", "compress", "run", str(two), "--out", str(out)), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = subprocess.run([sys.executable, "-m", "compress", "run", str(one), "--out", str(out)], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]

    run_dir = out / "two"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [s["name"] for s in manifest["stages"]] == ["01-finetune", "02-export_onnx", "03-ptq"]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["01-finetune", "02-export_onnx", "03-ptq"]
    assert not list(run_dir.glob(".*.partial")) and not list(run_dir.glob("error*.log"))
    assert proc.stdout.count("run directory:") == 1  # rank 0 alone reports the run

    trained = json.loads((run_dir / "01-finetune" / "stage.json").read_text())["training"]
    alone = json.loads((out / "one" / "01-finetune" / "stage.json").read_text())["training"]
    assert (trained["processes"], trained["per_device_batch_size"], trained["global_batch_size"]) == (2, 4, 8)
    assert (alone["processes"], alone["per_device_batch_size"], alone["global_batch_size"]) == (1, 8, 8)
    assert trained["steps"] == alone["steps"] == 4 and trained["threads_per_process"] >= 1
    assert trained["first_loss"] == pytest.approx(alone["first_loss"], abs=1e-5)
    # Same global batch, same examples per step, same LR schedule: the weights may differ only by
    # float32 summation order (seen: 3e-8). A shard, LR-schedule or sync bug moves them by ~lr (1e-3).
    a, b = weights(run_dir / "01-finetune"), weights(out / "one" / "01-finetune")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    for name in ("02-export_onnx", "03-ptq"):
        mine = json.loads((run_dir / name / "stage.json").read_text())
        theirs = json.loads((out / "one" / name / "stage.json").read_text())
        assert mine["accuracy"] == theirs["accuracy"]


def test_accelerate_launch_drives_the_recipe_too(tmp_path, no_dropout_model):
    """`accelerate launch --multi_gpu` (the README's line; it goes through torchrun and falls
    back to gloo without a GPU) gives the same run as torchrun."""
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, after="")
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_free_port()), "-m", "compress", "run", str(recipe),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    training = json.loads((out / "tiny" / "01-finetune" / "stage.json").read_text())["training"]
    assert (training["processes"], training["global_batch_size"]) == (2, 8)


def test_a_rank_that_raises_stops_the_job_and_is_named(tmp_path, no_dropout_model):
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, max_steps=50)
    out = tmp_path / "runs"
    started = time.perf_counter()
    proc = subprocess.run(torchrun(2, str(ROOT / "tests" / "dist_fail_worker.py"), "raise", "1", "run", str(recipe),
                                   "--out", str(out)), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert time.perf_counter() - started < 240  # nobody left waiting on a dead peer
    line = next(ln for ln in proc.stderr.splitlines() if "error:" in ln and "rank 1 of 2" in ln)
    assert "injected failure in the second training step" in line
    assert (out / "tiny" / "error.rank1.log").is_file()
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert manifest["status"] in ("failed", "running")  # "running" only if rank 0 was killed outright
    assert not (out / "tiny" / "01-finetune").exists()  # nothing half-written looks complete


def test_a_rank_that_hangs_is_given_up_after_the_time_out(tmp_path, no_dropout_model):
    """Rank 0 never reaches the first collective: rank 1 stops after COMPRESS_DIST_TIMEOUT
    with one line saying whom it waited for, and the launcher ends the job."""
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, after="")
    started = time.perf_counter()
    proc = subprocess.run(torchrun(2, str(ROOT / "tests" / "dist_fail_worker.py"), "hang", "0", "run", str(recipe),
                                   "--out", str(tmp_path / "runs")),
                          env={**_env(), "COMPRESS_DIST_TIMEOUT": "10"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert time.perf_counter() - started < 120
    line = next(ln for ln in proc.stderr.splitlines() if "error:" in ln and "rank 1 of 2" in ln)
    assert "rank 0 did not answer within 10 s" in line


def _kill_after_checkpoint(cmd: list[str], state: Path) -> int:
    """Start the job, kill -9 the launcher and every worker (torchrun gives each worker a
    session of its own) once a training checkpoint exists; returns the checkpoint's step."""
    import psutil

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before a checkpoint could be caught"
    job = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in job:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs([p for p in map(_process, job) if p is not None], timeout=30)
    return json.loads(state.read_text())["step"]


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_kill_9_of_the_job_mid_training_resumes_with_the_same_world_size(tmp_path, no_dropout_model):
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, max_steps=120, extra="    checkpoint_every: 10\n",
                          after="")
    out = tmp_path / "runs"
    cmd = torchrun(2, "-m", "compress", "run", str(recipe), "--out", str(out))
    state = out / "tiny" / ".01-finetune.partial" / "checkpoint" / "state.json"
    saved = _kill_after_checkpoint(cmd, state)
    assert json.loads(state.read_text())["processes"] == 2
    resumed = subprocess.run(torchrun(2, "-m", "compress", "run", str(recipe), "--out", str(out)), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = " ".join(resumed.stderr.split())
    assert "finetune: resuming from step" in log
    assert int(log.split("finetune: resuming from step ")[1].split()[0]) >= saved
    record = json.loads((out / "tiny" / "01-finetune" / "stage.json").read_text())
    assert record["training"]["resumed_from_step"] >= saved and record["training"]["steps"] == 120


def test_a_changed_world_size_says_so_and_restarts_the_stage(tmp_path, no_dropout_model):
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, max_steps=120, extra="    checkpoint_every: 10\n",
                          after="")
    out = tmp_path / "runs"
    state = out / "tiny" / ".01-finetune.partial" / "checkpoint" / "state.json"
    _kill_after_checkpoint(torchrun(2, "-m", "compress", "run", str(recipe), "--out", str(out)), state)
    alone = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe), "--out", str(out)], env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-4000:]
    log = " ".join(alone.stderr.split())
    assert "was written by 2 processes and this run has 1: the stage restarts from step 0" in log
    record = json.loads((out / "tiny" / "01-finetune" / "stage.json").read_text())
    assert record["training"]["resumed_from_step"] is None and record["training"]["processes"] == 1


def test_every_training_stage_kind_runs_in_two_processes(tmp_path, no_dropout_model):
    """distill: the teacher's logits are computed once, sharded over the ranks and gathered;
    prune: importance is summed over the ranks' shards and both ranks train the recovery;
    qat: both ranks train, rank 0 alone exports and checks parity."""
    after = """  - kind: distill
    keep_layers: [1]
    cache_teacher: true
    max_steps: 2
    batch_size: 4
  - kind: prune
    ffn: 0.5
    importance_batches: 4
    max_steps: 2
    batch_size: 4
  - kind: qat
    max_steps: 2
    batch_size: 4
    calibration_samples: 8
"""
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, max_steps=2, after=after)
    out = tmp_path / "runs"
    proc = subprocess.run(torchrun(2, "-m", "compress", "run", str(recipe), "--out", str(out)), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    distill = json.loads((out / "tiny" / "02-distill" / "stage.json").read_text())
    prune = json.loads((out / "tiny" / "03-prune" / "stage.json").read_text())
    assert distill["cached_teacher_logits"] and distill["training"]["processes"] == 2
    assert prune["importance"]["batches"] == 4  # 2 per rank, summed
    assert prune["training"]["processes"] == 2
    qat = json.loads((out / "tiny" / "04-qat" / "stage.json").read_text())
    assert qat["training"]["processes"] == 2 and qat["parity"]["label_agreement"] == 1.0
    assert json.loads((out / "tiny" / "manifest.json").read_text())["status"] == "completed"


def test_bf16_mixed_precision_trains_on_a_cpu(tmp_path, no_dropout_model):
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    recipe = write_recipe(tmp_path, "tiny", batch_size=8, max_steps=2, extra="    mixed_precision: bf16\n", after="")
    run_dir = run_recipe(load_recipe(recipe), tmp_path / "runs", recipe_path=recipe).run_dir
    training = json.loads((run_dir / "01-finetune" / "stage.json").read_text())["training"]
    assert training["mixed_precision"] == "bf16"
    import torch

    assert {t.dtype for t in weights(run_dir / "01-finetune").values()} == {torch.float32}  # weights stay fp32


def test_fp16_without_a_gpu_is_refused_by_name(tmp_path, no_dropout_model):
    import torch

    from compress.errors import CompressError
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = write_recipe(tmp_path, "tiny", batch_size=8, max_steps=2, extra="    mixed_precision: fp16\n", after="")
    with pytest.raises(CompressError, match="mixed_precision: fp16 needs a GPU"):
        run_recipe(load_recipe(recipe), tmp_path / "runs", recipe_path=recipe)


@pytest.mark.gpu
def test_nccl_two_gpus_with_fp16(tmp_path, no_dropout_model):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(GPU_REASON)
    recipe = write_recipe(tmp_path, "tiny", batch_size=4, extra="    mixed_precision: fp16\n")
    proc = subprocess.run(torchrun(2, "-m", "compress", "run", str(recipe), "--out", str(tmp_path / "runs")),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    training = json.loads((tmp_path / "runs" / "tiny" / "01-finetune" / "stage.json").read_text())["training"]
    assert training["processes"] == 2 and training["mixed_precision"] == "fp16" and "cuda" in training["device"]
