"""run_recipe: the whole flow. The artifact is the only thing passed between stages."""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifacts import Artifact, TorchModel
from compress.context import RunContext
from compress.evaluate import measure_artifact
from compress.models import label_names_of, resolve_model_dir
from compress.recipe import Recipe

log = logging.getLogger(__name__)


def run_recipe(recipe: Recipe, out_root: Path, recipe_path: Path | None = None) -> RunContext:
    ctx = RunContext.create(recipe, out_root / recipe.name, recipe_path)
    try:
        model: Artifact = TorchModel(resolve_model_dir(recipe.model))
        if label_names_of(model.path) == ctx.splits.label_names:  # already a classifier for these labels
            log.info("measuring the input model")
            ctx.record_input(measure_artifact(model, ctx))
        for i, stage in enumerate(recipe.stages):
            log.info("stage %d/%d: %s", i + 1, len(recipe.stages), stage.kind)
            with ctx.stage(i, stage.kind, stage.model_dump(mode="json", exclude={"kind"})) as sctx:
                produced = stage.run(model, sctx)
                sctx.record(**measure_artifact(produced, ctx))
            model = type(produced)(ctx.run_dir / ctx.stage_dir_name(i, stage.kind))
    except BaseException as e:
        if ctx.manifest.get("status") == "running":  # failed outside a stage (e.g. loading data)
            ctx.finish("failed", error=str(e) or type(e).__name__)
        raise
    ctx.finish("completed", final=model)
    return ctx
