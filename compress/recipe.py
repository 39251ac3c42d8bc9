"""The recipe: YAML → a validated, frozen pydantic model. Every user mistake becomes
a RecipeError naming the recipe file and the field, before anything heavy runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from compress.artifacts import TorchModel
from compress.bench.settings import BenchSettings, ShapeSpec
from compress.data import DataSpec, check_data_spec
from compress.errors import CompressError, RecipeError
from compress.evaluate import MeasureSpec
from compress.locations import (
    check_location,
    resolve_data_location,
    resolve_model_location,
)
from compress.plugins import metric_plugin_names
from compress.select.spec import SelectSpec
from compress.stages import STAGE_CLASSES, STAGE_KINDS, Stage
from compress.tasks import get_task, task_names
from compress.yaml_input import describe_validation_error, read_yaml_file

FORMAT_TASKS = {"conll": "token-classification", "squad": "question-answering",  # formats only one task reads
                "txt": "causal-lm"}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    model: str = Field(description="A local Hugging Face checkpoint directory (relative to the recipe), a Hugging "
                                   "Face Hub id ('bert-base-uncased', 'owner/name': used when no such directory "
                                   "exists; './name' is always a directory) or 'builtin:minilm-l6'.")
    model_revision: str | None = Field(None, min_length=1, description="The Hub revision of a Hub id model: "
                                       "branch, tag or commit (default main).")
    task: str = Field(description="What the model does: one module under compress/tasks "
                                  f"({', '.join(task_names())}).", json_schema_extra={"enum": task_names()})
    metric: str | None = Field(
        None, description="The metric the ledger, keep_best, the budgets and the benchmark compare (higher is "
        "better); default: the task's (accuracy, entity_f1, f1). One of the task's metric names"
        + (f", or an installed metric plugin's ({', '.join(metric_plugin_names())})" if metric_plugin_names() else "")
        + ".")
    trust_remote_code: bool = False
    data: DataSpec
    stages: list[Stage] = Field(min_length=1)
    measure: MeasureSpec = MeasureSpec()
    benchmark: BenchSettings | None = Field(None, description="Benchmark the run's artifacts after the last stage.")
    select: SelectSpec | None = Field(
        None, description="Choose the fastest artifact of the run within a metric budget, on one target and shape; "
                          "a package stage ships that one and shows the Pareto table in its model card.")

    _location = field_validator("model")(check_location)

    @field_validator("task")
    @classmethod
    def _task_implemented(cls, task: str) -> str:
        get_task(task)  # ValueError naming the supported tasks
        return task

    @model_validator(mode="after")
    def _metric_of_the_task(self):
        names = get_task(self.task).metric_names
        if self.metric is not None and self.metric not in names:
            raise ValueError(f"metric {self.metric!r} is not a {self.task} metric (choose from {', '.join(names)})")
        self._budgets_fit_the_metric()
        return self

    def _budgets_fit_the_metric(self) -> None:
        """The budgets (max_metric_drop) and select measure a drop in points of a higher-is-better
        metric: a lower-is-better one (perplexity) is refused by name rather than misread."""
        from compress.tasks import is_lower_better

        task = get_task(self.task)
        metric = self.metric or task.primary_metric
        if not is_lower_better(task, metric):
            return
        for i, stage in enumerate(self.stages):
            if getattr(stage, "max_metric_drop", None) is not None:
                raise ValueError(f"stages[{i}] ({stage.kind}).max_metric_drop: budgets take a higher-is-better "
                                 f"metric, and {metric} is lower-is-better (set metric: to one of "
                                 f"{', '.join(m for m in task.metric_names if m != metric)})")
        if self.select is not None:
            raise ValueError(f"select: it compares drops of a higher-is-better metric, and {metric} is "
                             "lower-is-better")

    @model_validator(mode="after")
    def _data_fits_the_task(self):
        """Data settings the task would ignore or cannot read fail here, before anything runs."""
        task = get_task(self.task)
        if self.data.text_pair_column and "text_pair_column" not in task.data_columns:
            raise ValueError(f"data.text_pair_column: {self.task} takes no text pairs (question-answering reads "
                             "question_column and context_column)")
        if self.data.labels is not None and not task.labelled:
            raise ValueError(f"data.labels: {self.task} has no labels")
        wanted = FORMAT_TASKS.get(self.data.format or "")
        if wanted and wanted != self.task:
            raise ValueError(f"data.format: {self.data.format} files hold {wanted} data, not {self.task} data")
        return self

    @model_validator(mode="after")
    def _stages_fit_the_task(self):
        task = get_task(self.task)
        for i, stage in enumerate(self.stages):
            try:
                stage.check_task(task)
            except ValueError as e:
                raise ValueError(f"stages[{i}] ({stage.kind}).{e}") from None
        return self

    @model_validator(mode="after")
    def _select_fits_the_stages(self):
        if self.select is not None:
            try:
                self.select.check_in_recipe(list(self.stages))
            except ValueError as e:
                raise ValueError(f"select.{e}") from None
        return self

    @property
    def metric_name(self) -> str:
        """The recipe's metric, or its task's default one."""
        return self.metric or get_task(self.task).primary_metric

    @field_validator("stages")
    @classmethod
    def _stages_chain(cls, stages: list) -> list:
        check_stage_chain(stages)
        return stages


def check_stage_chain(stages: list) -> None:
    """Each stage must accept what the one before it produces (the model is a torch model), and a
    `final` stage (package) must come last."""
    current, source = TorchModel, "the input model"
    for i, stage in enumerate(stages):
        if i > 0 and stages[i - 1].final:
            raise ValueError(f"stages[{i - 1}] ({stages[i - 1].kind}) must be the last stage "
                             f"(stages[{i}] ({stage.kind}) follows it)")
        try:
            stage.check_in_recipe(i, stages)
        except ValueError as e:
            raise ValueError(f"stages[{i}] ({stage.kind}): {e}") from None
        if current not in stage.accepts:
            wanted = " or ".join(a.description for a in stage.accepts)
            raise ValueError(f"stages[{i}] ({stage.kind}) takes {wanted} but gets {current.description} from {source}")
        current, source = stage.produces, f"stages[{i}] ({stage.kind})"


# ---------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, check_files: bool = True) -> Recipe:
    """Parse, validate and resolve a recipe file. Relative paths resolve against the
    recipe's directory. Raises RecipeError with a one-line message."""
    path = Path(path)
    raw = read_yaml_file(path, "recipe", RecipeError)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe fields at the top level, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{path}: {describe_validation_error(e, _ALL_FIELDS, STAGE_KINDS)}") from None
    recipe = resolve_paths(recipe, path.parent, path)
    if check_files:
        check_inputs(recipe, path)
    return recipe


def resolve_paths(recipe: Recipe, base: Path, recipe_path: Path | None = None) -> Recipe:
    def resolve(p: str | None, field: str) -> str | None:
        return resolve_data_location(p, base, f"{recipe_path or base}: {field}", RecipeError)

    data = recipe.data.model_copy(
        update={"train": resolve(recipe.data.train, "data.train"), "eval": resolve(recipe.data.eval, "data.eval")}
    )
    model = resolve_model_location(recipe.model, base, f"{recipe_path or base}: model", RecipeError)
    return recipe.model_copy(update={"model": model, "data": data})


def check_inputs(recipe: Recipe, recipe_path: Path) -> None:
    """Cheap existence checks on the model and the data (headers only)."""
    from compress.models import check_model_spec, is_hub_model

    try:
        check_model_spec(recipe.model, recipe.trust_remote_code, recipe.model_revision)
    except CompressError as e:
        local = f"no directory {recipe_path.parent / recipe.model}, and " if is_hub_model(recipe.model) else ""
        raise RecipeError(f"{recipe_path}: model: {local}{e}") from None
    for i, stage in enumerate(recipe.stages):  # a teacher named by a Hub id or a directory
        try:
            stage.check_inputs(recipe_path)
        except CompressError as e:
            raise RecipeError(f"{recipe_path}: stages[{i}].{e}") from None
    try:
        check_data_spec(recipe.data, recipe.task)
    except CompressError as e:
        raise RecipeError(f"{recipe_path}: data.{e}") from None


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()


# ---------------------------------------------------------------------------- errors


def _nested_specs(cls: type[BaseModel]) -> list[type[BaseModel]]:
    """Models used as field types of cls (e.g. a stage's `student:` block), one level down."""
    import typing

    found = []
    for f in cls.model_fields.values():
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                found.append(t)
    return found


# every field name a recipe can hold, for the 'did you mean' hint on an unknown one
_ALL_FIELDS = sorted(
    {name for cls in (Recipe, DataSpec, MeasureSpec, BenchSettings, ShapeSpec, SelectSpec, *STAGE_CLASSES)
     for spec in (cls, *_nested_specs(cls)) for name in spec.model_fields}
)
