from compress.models import count_parameters, load_model
from compress.tasks import get_task
from tests.helpers import manifest, run_tiny, stage_json

STAGES = """
  - kind: finetune
    epochs: 10
    batch_size: 8
    learning_rate: 1.0e-2
    warmup_ratio: 0.0
"""


def test_finetune_trains_a_classifier_from_a_base_model(tmp_path, tiny_base_dir):
    run_dir = run_tiny(tmp_path, tiny_base_dir, STAGES)
    record = stage_json(run_dir, "01-finetune")
    training = record["training"]
    assert training["steps"] == 10 * 8  # 60 train rows after a 25% eval split: 8 batches of <= 8
    assert training["final_loss"] < training["first_loss"]
    # the tiny task is learnable: accuracy clearly above chance on the held-out 20
    assert record["accuracy"] >= 0.8, record
    assert record["examples"] == 20
    model_dir = run_dir / "01-finetune"
    assert get_task("text-classification").labels_of(model_dir) == ["neg", "pos"]
    model = load_model(model_dir)
    assert count_parameters(model)["parameters"] == record["parameters"]
    assert "input" not in manifest(run_dir)  # a base model with no head is not measured as a baseline


def test_finetune_is_reproducible_with_a_seed(tmp_path, tiny_base_dir):
    stages = STAGES.replace("epochs: 10", "max_steps: 3")
    a = stage_json(run_tiny(tmp_path / "a", tiny_base_dir, stages), "01-finetune")
    b = stage_json(run_tiny(tmp_path / "b", tiny_base_dir, stages), "01-finetune")
    assert a["training"]["final_loss"] == b["training"]["final_loss"]
    assert a["accuracy"] == b["accuracy"]
