from __future__ import annotations

import re

import pytest

from compress.errors import RecipeError
from compress.recipe import load_recipe
from tests.conftest import tiny_recipe_text


def write(recipe_dir, text: str, name: str = "recipe.yaml"):
    path = recipe_dir / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_recipe_resolves_paths_relative_to_the_recipe(recipe_dir):
    recipe = load_recipe(write(recipe_dir, tiny_recipe_text()))
    assert recipe.model == str(recipe_dir / "model")
    assert recipe.data.train == str(recipe_dir / "reviews.csv")
    assert [s.kind for s in recipe.stages] == ["finetune", "export_onnx", "optimize_onnx", "ptq"]
    assert recipe.stages[0].epochs == 2 and recipe.stages[1].atol == 1e-4  # defaults filled in


def test_recipe_is_frozen(recipe_dir):
    recipe = load_recipe(write(recipe_dir, tiny_recipe_text()))
    with pytest.raises(Exception):
        recipe.stages[0].epochs = 3


BAD_CASES = {
    "invalid yaml": (
        "name: x\nstages: [unclosed\n",
        r"invalid YAML: line \d+, column \d+",
    ),
    "not a mapping": ("- just\n- a list\n", "expected a mapping of recipe fields at the top level, got list"),
    "unknown stage kind": (
        tiny_recipe_text(stages="\n  - kind: finetune\n  - kind: distil\n"),
        r"stages\[1\]\.kind: unknown stage kind 'distil' \(expected one of: finetune, export_onnx",
    ),
    "stage without kind": (
        tiny_recipe_text(stages="\n  - epochs: 1\n"),
        r"stages\[0\]: stage has no 'kind'",
    ),
    "wrong type": (
        tiny_recipe_text(stages="\n  - kind: finetune\n    epochs: lots\n"),
        r"stages\[0\]\.epochs: Input should be a valid number.*\(got 'lots'\)",
    ),
    "out of range": (
        tiny_recipe_text(stages="\n  - kind: finetune\n    learning_rate: -1\n"),
        r"stages\[0\]\.learning_rate: Input should be greater than 0 \(got -1\)",
    ),
    "unknown field with suggestion": (
        tiny_recipe_text(stages="\n  - kind: finetune\n    epoch: 1\n"),
        r"stages\[0\]\.epoch: unknown field \(did you mean 'epochs'\?\)",
    ),
    "unknown top-level field": (
        tiny_recipe_text() + "extra_thing: 1\n",
        r"extra_thing: unknown field",
    ),
    "missing required field": (
        tiny_recipe_text().replace("task: text-classification\n", ""),
        r"task: required field is missing",
    ),
    "task not implemented": (
        tiny_recipe_text().replace("text-classification", "summarization"),
        r"task: task 'summarization' is not supported yet",
    ),
    "onnx stage before export": (
        tiny_recipe_text(stages="\n  - kind: finetune\n  - kind: ptq\n"),
        r"stages: stages\[1\] \(ptq\) takes an ONNX model but gets a torch model from stages\[0\] \(finetune\)",
    ),
    "torch stage after export": (
        tiny_recipe_text(stages="\n  - kind: export_onnx\n  - kind: finetune\n"),
        r"stages\[1\] \(finetune\) takes a torch model but gets an ONNX model from stages\[0\] \(export_onnx\)",
    ),
    "no stages": (tiny_recipe_text(stages=" []\n"), r"stages: List should have at least 1 item"),
    "missing model directory": (
        tiny_recipe_text(model="no-such-model"),
        r"recipe\.yaml: model: no directory .*no-such-model, and Hugging Face model 'no-such-model' is not in the "
        "local cache",
    ),
    "unknown builtin model": (
        tiny_recipe_text(model="builtin:gpt-17"),
        r"model: unknown built-in model 'gpt-17' \(known: minilm-l6, smollm2-135m\)",
    ),
    "missing data file": (
        tiny_recipe_text(train="nowhere.csv"),
        r"recipe\.yaml: data\.train: data file not found: .*nowhere\.csv",
    ),
    "missing column": (
        tiny_recipe_text().replace("  seed: 7\n", "  seed: 7\n  text_column: review\n"),
        r"data\.text_column: column 'review' not in .*reviews\.csv \(columns: text, label\)",
    ),
    "unknown builtin data": (
        tiny_recipe_text(train="builtin:imdb"),
        r"data\.train: unknown built-in dataset 'imdb'",
    ),
    "bad eval fraction": (
        tiny_recipe_text().replace("eval_fraction: 0.25", "eval_fraction: 1.5"),
        r"data\.eval_fraction: Input should be less than 1 \(got 1\.5\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_recipe_gives_one_line_naming_file_and_field(recipe_dir, case):
    text, pattern = BAD_CASES[case]
    path = write(recipe_dir, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert re.search(pattern, message), message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_recipe_not_utf8(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: not UTF-8 text"):
        load_recipe(path)


def test_model_without_weights_is_rejected(recipe_dir):
    for f in (recipe_dir / "model").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(RecipeError, match=r"model: .* has no weights"):
        load_recipe(write(recipe_dir, tiny_recipe_text()))


def test_remote_code_needs_opt_in(recipe_dir):
    import json

    cfg_path = recipe_dir / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(RecipeError, match="set trust_remote_code: true"):
        load_recipe(write(recipe_dir, tiny_recipe_text()))
    load_recipe(write(recipe_dir, tiny_recipe_text() + "trust_remote_code: true\n"))


def test_yaml_tags_are_not_executed(recipe_dir):
    text = tiny_recipe_text().replace("name: tiny", "name: !!python/object/apply:os.system ['echo pwned']")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(write(recipe_dir, text))
