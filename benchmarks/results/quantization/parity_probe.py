"""Write parity-probe.json: the parity records of a run's qat and optimize_onnx stages and the
logit step read from the QAT graph, with each stage's max |difference| in steps.

    python benchmarks/results/quantization/parity_probe.py RUN_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from compress.onnx_graph import output_step  # noqa: E402


def main(run_dir: Path) -> None:
    step = output_step(run_dir / "02-qat" / "model.onnx")
    out = {"logit_step": step, "stages": {}}
    for name in ("01-finetune", "02-qat", "03-optimize_onnx"):
        record = json.loads((run_dir / name / "stage.json").read_text())
        entry = {"accuracy": record["accuracy"]}
        if "parity" in record:
            parity = record["parity"]
            entry["parity"] = {k: parity[k] for k in ("max_abs_diff", "p99_abs_diff", "mean_abs_diff",
                                                      "label_agreement", "examples")}
            entry["max_abs_diff_steps"] = round(parity["max_abs_diff"] / step["logit_step"], 4)
        out["stages"][name] = entry
    target = Path(__file__).with_name("parity-probe.json")
    target.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
