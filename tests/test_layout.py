"""The package's shape: no import cycles (function-level imports included, TYPE_CHECKING
blocks excluded), and the registries that follow from the files (tasks, stage kinds)."""

from __future__ import annotations

import ast
from pathlib import Path

import compress

PACKAGE = Path(compress.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """compress modules that `module` imports anywhere in its body, outside TYPE_CHECKING."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            stack.append(child)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = module.split(".")[: len(module.split(".")) - child.level + (path.name == "__init__.py")]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            found |= {n for n in names if n in known and n != module}
    return found


def test_no_import_cycles():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}

    def cycle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(node: str) -> list[str] | None:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    if found := walk(nxt):
                        return found
                    path.pop()
            return None

        return walk(start)

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, " -> ".join(cycles[0])


def test_a_task_is_one_module_and_the_recipe_accepts_it():
    from compress.recipe import Recipe
    from compress.tasks import get_task, task_modules, task_names

    assert "text_classification" in task_modules()
    for name in task_names():
        assert get_task(name).name == name
    assert Recipe.model_json_schema()["properties"]["task"]["enum"] == task_names()


def test_every_stage_kind_is_its_own_module_or_folder():
    from compress.stages import STAGE_KINDS

    for kind in STAGE_KINDS:
        assert (PACKAGE / "stages" / f"{kind}.py").is_file() or (PACKAGE / "stages" / kind / "__init__.py").is_file()
