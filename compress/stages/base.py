"""The stage contract: a frozen pydantic config with a `run` that takes one artifact
and returns a new one written into the stage's own directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from compress.artifacts import Artifact, TorchModel

if TYPE_CHECKING:
    from compress.context import StageContext


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accepts: ClassVar[tuple[type[Artifact], ...]] = (TorchModel,)
    produces: ClassVar[type[Artifact]] = TorchModel
    trains: ClassVar[bool] = False  # needs the train split
    final: ClassVar[bool] = False  # must be the last stage of a recipe (e.g. package)

    def unavailable_reason(self) -> str | None:
        """Why this stage cannot run on this machine (missing GPU or package), or None.
        Such a stage is skipped with the reason and its input passes through unchanged."""
        return None

    def run(self, model: Artifact, ctx: StageContext) -> Artifact:  # pragma: no cover - abstract
        raise NotImplementedError
