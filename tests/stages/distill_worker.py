"""One rank of the 2-process distill test (started by torchrun): runs the recipe's first
stage (a distill) on the given teacher and writes what it trained to <out>/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import compress.training
from compress.artifacts import TorchModel
from compress.context import RunContext
from compress.recipe import load_recipe


def main(recipe_path: Path, teacher: Path, out: Path) -> None:
    rank = int(os.environ["RANK"])
    recipe = load_recipe(recipe_path)
    rank_dir = out / f"rank{rank}"  # the run bookkeeping is per rank; the artifact directory is shared
    rank_dir.mkdir(parents=True, exist_ok=True)
    (out / "student").mkdir(parents=True, exist_ok=True)
    ctx = RunContext.create(recipe, rank_dir, recipe_path).stage_context(0, "distill", out / "student", fingerprint="2proc")
    trained = {}
    save = compress.training.save_trained

    def capture(result, out_dir, tokenizer, model=None):
        trained["model"] = model or result.model
        return save(result, out_dir, tokenizer, model)

    compress.training.save_trained = capture
    recipe.stages[0].run(TorchModel(teacher), ctx)
    weights = {k: float(v.double().sum()) for k, v in trained["model"].state_dict().items()}
    (out / f"rank{rank}.json").write_text(json.dumps({"info": ctx.info, "weights": weights}, default=str))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
