import json

import onnx
import pytest

from compress.errors import StageError
from tests.helpers import manifest, run_tiny, stage_json


def test_export_has_dynamic_axes_and_passes_parity(tmp_path, tiny_classifier_dir):
    run_dir = run_tiny(tmp_path, tiny_classifier_dir, "\n  - kind: export_onnx\n")
    record = stage_json(run_dir, "01-export_onnx")
    assert record["parity"]["max_abs_diff"] <= 1e-4
    assert record["parity"]["label_agreement"] == 1.0
    graph = onnx.load(str(run_dir / "01-export_onnx" / "model.onnx")).graph
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert set(dims) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(all(dims[n]) for n in dims)  # batch and sequence are both symbolic
    assert [o.name for o in graph.output] == ["logits"]
    # the ONNX artifact is self-contained: tokenizer and labels beside the graph
    config = json.loads((run_dir / "01-export_onnx" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert (run_dir / "01-export_onnx" / "tokenizer.json").is_file()
    # same eval split, same predictions: the ledger shows no accuracy change
    assert record["accuracy"] == manifest(run_dir)["input"]["accuracy"]


def test_parity_failure_fails_the_stage_and_keeps_earlier_outputs(tmp_path, tiny_classifier_dir):
    stages = "\n  - kind: export_onnx\n  - kind: optimize_onnx\n    atol: 1.0e-12\n"
    with pytest.raises(StageError, match=r"parity check failed: max \|logit difference\| .* > atol 1e-12"):
        run_tiny(tmp_path, tiny_classifier_dir, stages)
    run_dir = tmp_path / "runs" / "tiny"
    m = manifest(run_dir)
    assert m["status"] == "failed"
    assert [s["status"] for s in m["stages"]] == ["completed", "failed"]
    assert "parity check failed" in m["stages"][1]["error"]
    assert (run_dir / "01-export_onnx" / "model.onnx").is_file()
    assert not (run_dir / "02-optimize_onnx").exists()
    assert not list(run_dir.glob(".*partial"))
