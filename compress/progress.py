"""Progress bars for the long steps (training, evaluation, export, fusion, calibration, the
sensitivity search, engine builds, benchmark cells): one home for how they look and when
they show.

Every bar is drawn on one console (stderr unless the CLI hands over its own), so a bar
opened inside another one's step nests into the same live display (rich >= 14.1) instead
of two displays fighting over the terminal; tables and JSON on stdout stay clean. Bars
are off under --quiet, on every process but the first of each machine (torchrun), and
in the benchmark's cell subprocesses. Off a terminal (a CI log, a pipe) only training's
finished bar is written.

rich is imported inside the functions: modules that `compress validate` loads import this one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, TaskID

_console: Console | None = None
_enabled = True


def configure(console: Console | None = None, enabled: bool = True) -> None:
    """Where bars are drawn (the CLI passes its stderr console, the one its log lines use)
    and whether they are drawn at all (False: --quiet, or a worker process)."""
    global _console, _enabled
    _console, _enabled = console, enabled


def bars_console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def bars_shown() -> bool:
    from compress.distributed import launch

    return _enabled and launch().local_rank == 0  # one machine's ranks would draw over each other


def counted_columns(*extra: ProgressColumn) -> tuple[ProgressColumn, ...]:
    """description, bar, done/total, any `extra` columns, time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra, TimeRemainingColumn())


def spinner_columns() -> tuple[ProgressColumn, ...]:
    """For one opaque library call (no callbacks to count): spinner, description, time so far."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    return (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())


def make_progress(*columns: ProgressColumn, transient: bool = True, disable: bool = False) -> Progress:
    """A rich Progress on the bars' console. Transient by default: a step's bar disappears when
    the step ends and its result is logged; training keeps its bar (transient=False)."""
    from rich.progress import Progress

    console = bars_console()
    # Off a terminal a transient bar draws nothing, yet rich ends every bar there with a blank line.
    pointless = transient and not (console.is_interactive or console.is_jupyter)
    return Progress(*(columns or counted_columns()), console=console, transient=transient,
                    disable=disable or pointless or not bars_shown())


class Bar:
    """One task of a live Progress, the handle a long step advances."""

    def __init__(self, progress: Progress, task: TaskID, description: str):
        self._progress, self._task, self.description = progress, task, description

    def advance(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def describe(self, description: str) -> None:
        """Name what runs now (e.g. the benchmark cell)."""
        self.description = description
        self._progress.update(self._task, description=description)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Bar]:
    """A transient bar of `total` steps; total None: a spinner for a step that cannot be counted."""
    columns = spinner_columns() if total is None else counted_columns()
    with make_progress(*columns) as progress:
        yield Bar(progress, progress.add_task(description, total=total), description)


def spinner(description: str):
    """progress_bar(description, None): for one library call that reports no progress."""
    return progress_bar(description, None)
