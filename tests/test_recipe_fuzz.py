"""Property: any recipe text, random or a mutation of a good one, is either accepted
or rejected with a RecipeError (one line naming the file) — never another exception."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import RecipeError
from compress.recipe import Recipe, load_recipe
from tests.conftest import tiny_recipe_text

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["builtin:minilm-l6", "builtin:rotten-tomatoes", "finetune", "ptq",
                                           "export_onnx", "model", "reviews.csv", "\x00", "../../etc", "~"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
KEYS = ["name", "model", "task", "data", "stages", "measure", "trust_remote_code", "train", "eval", "kind",
        "epochs", "learning_rate", "batch_size", "atol", "opset", "mode", "labels", "seed", "threads", "bogus"]


def check(recipe_dir, text: str) -> None:
    path = recipe_dir / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        recipe = load_recipe(path)
    except RecipeError as e:
        message = str(e)
        assert message.startswith(str(path)) and "\n" not in message, message
        return
    assert isinstance(recipe, Recipe)


def mutate(doc: dict, data) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        # walk to a random mapping or list inside the document
        node = doc
        for _ in range(data.draw(st.integers(0, 3))):
            children = [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, (dict, list))]
            if not children:
                break
            node = data.draw(st.sampled_from(children))
        if isinstance(node, dict):
            key = data.draw(st.sampled_from(sorted(node) + KEYS))
            action = data.draw(st.sampled_from(["set", "delete"]))
            if action == "delete":
                node.pop(key, None)
            else:
                node[key] = data.draw(values)
        elif isinstance(node, list):
            if node and data.draw(st.booleans()):
                node.pop(data.draw(st.integers(0, len(node) - 1)))
            else:
                node.append(data.draw(values))
    return doc


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_mutated_recipes_are_accepted_or_cleanly_rejected(recipe_dir, data):
    good = yaml.safe_load(tiny_recipe_text())
    check(recipe_dir, yaml.safe_dump(mutate(good, data), allow_unicode=True))


paths = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\x00", "a\x00b", "~", "~nobody/x", "/", ".",
                                                         "builtin:", "builtin:minilm-l6", "reviews.csv", "model"]))


@FUZZ
@given(model=paths, train=paths, eval_=st.one_of(st.none(), paths))
def test_hostile_paths_are_cleanly_rejected(recipe_dir, model, train, eval_):
    doc = yaml.safe_load(tiny_recipe_text())
    doc["model"], doc["data"]["train"], doc["data"]["eval"] = model, train, eval_
    check(recipe_dir, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(doc=values)
def test_random_documents_are_cleanly_rejected(recipe_dir, doc):
    check(recipe_dir, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_is_cleanly_rejected(recipe_dir, text):
    check(recipe_dir, text)
