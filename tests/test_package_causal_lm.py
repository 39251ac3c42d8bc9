"""The package stage at the end of a causal-lm recipe on the tiny llama: export_onnx then
package; the package generates the tokens transformers generates, deploy.json says so, the
model card shows generate(), and there is no Triton repository."""

from __future__ import annotations

import json

from compress.runtime import Predictor
from tests.helpers import run_tiny_lm, stage_json


def test_a_causal_lm_recipe_ends_in_a_validated_package(tiny_llama_dir, tmp_path):
    run = run_tiny_lm(tmp_path, tiny_llama_dir, """  - kind: export_onnx
  - kind: package
    validate_prompts: 3
    validate_new_tokens: 8
""", paragraphs=40, eval_fraction=0.25, latency_iterations=2)
    package = run / "02-package"
    record = stage_json(run, "02-package")["package"]
    (validated,) = record["validated"]
    assert validated["token_agreement"] == 1.0 and validated["examples"] == 3 and validated["max_new_tokens"] == 8
    assert "python or ensemble backend" in record["triton"] and not (package / "triton").exists()
    spec = json.loads((package / "deploy.json").read_text())
    assert spec["task"] == "causal-lm" and spec["past"]["layers"] == 2 and spec["validated"] == [validated]
    card = (package / "README.md").read_text()
    assert "predictor.generate([" in card and "tokens compared" in card and "triton/` is" not in card
    assert "pipeline_tag: text-generation" in card

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(package)
    ids = tokenizer("the model", return_tensors="pt", return_token_type_ids=False)
    expected = model.generate(**ids, max_new_tokens=10, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    assert Predictor.load(package).generate(["the model"], max_new_tokens=10)[0]["token_ids"] == expected
