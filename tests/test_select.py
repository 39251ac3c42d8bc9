"""`select:`: the choice as a pure function (Pareto front, budget, fastest), the block's
recipe errors, the candidates and reference read from ledger rows, and tiny runs that package
the chosen artifact (stage latencies) or time the candidates on another shape (bench)."""

from __future__ import annotations

import json

import pytest

from compress.errors import SelectionError
from compress.recipe import load_recipe, recipe_json_schema
from compress.select.candidates import select_artifact, stage_records_fit
from compress.select.pareto import Candidate, choose, pareto_front, selection_markdown
from compress.select.spec import SelectSpec
from tests.conftest import tiny_recipe_text
from tests.helpers import manifest, recipe_error, run_tiny, stage_json

EXPORT, FUSED, PTQ, AGGRESSIVE = (Candidate("02-export_onnx", "onnx", 0.80, 10.0),
                                  Candidate("03-optimize_onnx", "onnx", 0.80, 5.0),
                                  Candidate("04-ptq", "onnx", 0.79, 2.0),
                                  Candidate("05-prune", "onnx", 0.70, 1.0))


def test_pareto_front_and_the_fastest_within_budget():
    everything = [EXPORT, FUSED, PTQ, AGGRESSIVE]
    assert pareto_front(everything) == {"03-optimize_onnx", "04-ptq", "05-prune"}  # the export: as good, slower
    choice = choose(everything, reference=0.80, max_drop=0.015, reference_name="input", metric="accuracy")
    assert choice["chosen"] == "04-ptq"
    marks = {c["stage"]: (c["within_budget"], c["on_front"], c["chosen"]) for c in choice["candidates"]}
    assert marks == {"02-export_onnx": (True, False, False), "03-optimize_onnx": (True, True, False),
                     "04-ptq": (True, True, True), "05-prune": (False, True, False)}
    assert [c["drop_points"] for c in choice["candidates"]] == [0.0, 0.0, 1.0, 10.0]
    # a tighter budget: the fused fp32 model, the fastest with no drop
    assert choose(everything, 0.80, 0.0, "input", "accuracy")["chosen"] == "03-optimize_onnx"


def test_budget_edge_and_ties():
    # stored metrics have 4 digits: 0.8095 - 0.7995 is a drop of exactly 1 point, within 0.01
    edge = Candidate("04-ptq", "onnx", 0.7995, 2.0)
    assert choose([edge], 0.8095, 0.01, "input", "accuracy")["chosen"] == "04-ptq"
    tie = [Candidate("a", "onnx", 0.78, 2.0), Candidate("b", "onnx", 0.79, 2.0)]
    assert choose(tie, 0.80, 0.05, "input", "accuracy")["chosen"] == "b"  # same speed: the better metric


def test_no_candidate_within_budget_names_the_best():
    with pytest.raises(SelectionError) as info:
        choose([PTQ, AGGRESSIVE], reference=0.80, max_drop=0.005, reference_name="input", metric="accuracy")
    assert str(info.value) == ("no candidate is within max_metric_drop 0.005 (0.50 points) of input's accuracy "
                               "0.8000: the best, 04-ptq, drops 1.00 points (accuracy 0.7900)")
    with pytest.raises(SelectionError, match="no candidate: no completed stage"):
        choose([], 0.8, 0.01, "input", "accuracy")


def test_selection_table_marks_every_candidate():
    record = {"target": "ort-cpu", "shape": "b1xreal", "threads": 2, "metric": "accuracy", "max_metric_drop": 0.015,
              "reference": {"name": "input", "value": 0.80}, "latency_source": "each stage's own measurement",
              "not_candidates": [{"stage": "01-finetune", "reason": "a torch model; ort-cpu runs an ONNX model"}],
              **choose([EXPORT, FUSED, PTQ, AGGRESSIVE], 0.80, 0.015, "input", "accuracy")}
    text = selection_markdown(record)
    assert text.startswith("`select:` chose **04-ptq**: the fastest on ort-cpu (b1xreal, 2 threads) within 1.50 "
                           "points of input's accuracy 0.8000")
    for line in ("| 02-export_onnx | onnx | 0.8000 | 0.00 | 10.00 | dominated |",
                 "| 03-optimize_onnx | onnx | 0.8000 | 0.00 | 5.00 | on front |",
                 "| 04-ptq | onnx | 0.7900 | 1.00 | 2.00 | chosen, on front |",
                 "| 05-prune | onnx | 0.7000 | 10.00 | 1.00 | on front, over budget |"):
        assert line in text
    assert "Not candidates: 01-finetune (a torch model; ort-cpu runs an ONNX model)." in text


STAGES = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n  - kind: ptq\n  - kind: package\n"


def with_select(select: str, stages: str = STAGES) -> str:
    return tiny_recipe_text(stages=stages) + f"select:\n{select}"


@pytest.mark.parametrize("select, expected", [
    ("  target: ort-cpu\n", "select.max_metric_drop: required field is missing"),
    ("  max_metric_drop: 0.01\n  target: ort-gpu\n", "select.target: Input should be 'torch-cpu', 'ort-cpu'"),
    ("  max_metric_drop: 0.01\n  target: torch-cpu\n",
     "select.target: torch-cpu runs a torch model, which the package stage cannot ship (choose ort-cpu, ort-cuda, "
     "ort-trt, trt)"),
    ("  max_metric_drop: 0.01\n  target: trt\n",
     "select.target: trt runs a TensorRT engine and no stage before the package stage makes one"),
    ("  max_metric_drop: 0.01\n  reference: stage:package\n",
     "select.reference: 'stage:package' names no earlier stage (earlier stages: 01-export_onnx, 02-optimize_onnx, "
     "03-ptq)"),
    ("  max_metric_drop: 0.01\n  reference: ptq\n", "select.reference: must be 'input' or 'stage:<n|NN-kind|kind>'"),
    ("  max_metric_drop: 0.01\n  seq_len: 0\n", "select.seq_len: must be a positive number of tokens or 'real'"),
    ("  max_metric_drop: 0.01\n  seq_len: long\n", "select.seq_len"),
    ("  max_metric_drop: 1.5\n", "select.max_metric_drop: Input should be less than or equal to 1"),
    ("  max_drop: 0.01\n", "select.max_drop: unknown field (did you mean 'max_metric_drop'?)"),
])
def test_bad_select_block_is_one_line_naming_the_field(recipe_dir, select, expected):
    message = recipe_error(recipe_dir, with_select(select))
    assert message.startswith(f"{recipe_dir / 'recipe.yaml'}: {expected}"), message


def test_select_block_in_the_schema_and_recipe(recipe_dir):
    schema = recipe_json_schema()
    assert "select" in schema["properties"]
    assert set(schema["$defs"]["SelectSpec"]["properties"]) == set(SelectSpec.model_fields)
    assert schema["$defs"]["SelectSpec"]["required"] == ["max_metric_drop"]
    (recipe_dir / "recipe.yaml").write_text(with_select("  max_metric_drop: 0.01\n  reference: stage:ptq\n"))
    select = load_recipe(recipe_dir / "recipe.yaml").select
    assert (select.target, select.batch_size, select.seq_len, select.threads) == ("ort-cpu", 1, "real", None)
    assert select.reference == "stage:ptq" and select.shape == "b1xreal"


def test_stage_records_fit_only_their_own_target_and_shape(recipe_dir):
    (recipe_dir / "recipe.yaml").write_text(with_select("  max_metric_drop: 0.01\n"))
    recipe = load_recipe(recipe_dir / "recipe.yaml")  # measure: threads 1, 5 latency iterations
    fits = lambda **kw: stage_records_fit(recipe.select.model_copy(update=kw), recipe.measure)  # noqa: E731
    assert fits() and fits(threads=1)
    assert not fits(threads=2) and not fits(batch_size=8) and not fits(seq_len=128) and not fits(target="ort-cuda")
    assert not stage_records_fit(recipe.select, recipe.measure.model_copy(update={"latency_iterations": 0}))


def _rows():
    """A ledger as report.ledger_rows makes it: the input, a torch stage, ONNX stages, a skipped one."""
    def row(stage, artifact, acc, p50):
        return {"stage": stage, "artifact": artifact, "accuracy": acc, "latency": {"p50_ms": p50}}
    return [row("input", "torch", 0.81, 15.0), row("01-export_onnx", "onnx", 0.81, 9.0),
            row("02-optimize_onnx", "onnx", 0.81, 5.0), row("03-ptq", "onnx", 0.79, 2.5),
            {"stage": "04-package", "status": "running"}]


def test_candidates_and_reference_from_the_ledger(recipe_dir, tmp_path):
    (recipe_dir / "recipe.yaml").write_text(with_select("  max_metric_drop: 0.01\n"))
    recipe = load_recipe(recipe_dir / "recipe.yaml")
    record = select_artifact(recipe, _rows(), tmp_path)
    assert record["chosen"] == "02-optimize_onnx"  # the INT8 model drops 2 points
    assert record["reference"] == {"name": "input", "value": 0.81} and record["threads"] == 1
    assert [c["stage"] for c in record["candidates"]] == ["01-export_onnx", "02-optimize_onnx", "03-ptq"]
    assert record["not_candidates"] == [{"stage": "04-package", "reason": "running"}]
    assert record["latency_source"].startswith("each stage's own measurement")
    # against the fused model instead, with no room: the fused model itself
    ref = recipe.model_copy(update={"select": recipe.select.model_copy(update={"reference": "stage:2",
                                                                                "max_metric_drop": 0.0})})
    assert select_artifact(ref, _rows(), tmp_path)["reference"] == {"name": "02-optimize_onnx", "value": 0.81}
    strict = recipe.model_copy(update={"select": recipe.select.model_copy(update={"max_metric_drop": 0.0})})
    rows = [r | {"accuracy": 0.80} if r["stage"] not in ("input", "04-package") else r for r in _rows()]
    with pytest.raises(SelectionError, match=r"^select.max_metric_drop: no candidate is within max_metric_drop 0 "
                                             r"\(0.00 points\) of input's accuracy 0.8100: the best, 01-export_onnx, "
                                             r"drops 1.00 points"):
        select_artifact(strict, rows, tmp_path)
    onnx_less = [_rows()[0], _rows()[-1]]  # the torch input and the package still running
    with pytest.raises(SelectionError, match=r"^select.target: no stage has an ONNX model timed on ort-cpu with the "
                                             r"accuracy \(04-package: running\)"):
        select_artifact(recipe, onnx_less, tmp_path)


def test_select_packages_the_chosen_artifact(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, STAGES + "select:\n  max_metric_drop: 1.0\n")
    selection = manifest(run_dir)["selection"]
    candidates = {c["stage"]: c for c in selection["candidates"]}
    assert set(candidates) == {"01-export_onnx", "02-optimize_onnx", "03-ptq"}
    fastest = min(candidates.values(), key=lambda c: c["p50_ms"])
    assert selection["chosen"] == fastest["stage"] and fastest["chosen"] and fastest["on_front"]
    for name, c in candidates.items():  # the stages' own batch-1 measurement
        assert c["p50_ms"] == stage_json(run_dir, name)["latency"]["p50_ms"]
    chosen_model = (run_dir / selection["chosen"] / "model.onnx").read_bytes()
    assert (run_dir / "04-package" / "model.onnx").read_bytes() == chosen_model
    package = stage_json(run_dir, "04-package")
    assert package["selection"] == selection and package["latency_vs_input"]["input"] == selection["chosen"]
    card = (run_dir / "04-package" / "README.md").read_text()
    table = card.split("## Selection")[1].split("\n## ")[0]
    assert f"`select:` chose **{selection['chosen']}**" in table
    assert all(f"| {name} | onnx |" in table for name in candidates) and "chosen, on front" in table
    # the card's tags name what the packaged model went through, not the stages after it
    assert ("- quantized" in card.split("---")[1]) == (selection["chosen"] == "03-ptq")


def test_select_times_the_candidates_on_its_own_shape(tmp_path, tiny_classifier_dir):
    """No package stage, and a shape the stages did not time: the candidates are timed with the
    benchmark machinery into <run>/select/ and the choice is recorded in the manifest."""
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n  - kind: ptq\n"
                       + "select:\n  max_metric_drop: 1.0\n  seq_len: 16\n")
    selection = manifest(run_dir)["selection"]
    assert selection["shape"] == "b1x16" and selection["latency_source"].startswith("select/results.jsonl")
    timed = {r["model"]: r for r in map(json.loads, (run_dir / "select" / "results.jsonl").read_text().splitlines())}
    assert set(timed) == {"01-export_onnx", "02-ptq"} and {r["shape"] for r in timed.values()} == {"b1x16"}
    assert {c["stage"]: c["p50_ms"] for c in selection["candidates"]} == {n: r["p50_ms"] for n, r in timed.items()}
    assert selection["chosen"] == min(timed, key=lambda n: timed[n]["p50_ms"])
