"""Error types for problems the user can fix. The CLI prints them as one line."""


class CompressError(Exception):
    """A user-facing error: the message names what is wrong and where."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a path or value with a newline in it must not split the message.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class RecipeError(CompressError):
    """The recipe (or a file it points to) is malformed."""


class DataError(CompressError):
    """A data file is missing, unreadable or does not match the recipe."""


class StageError(CompressError):
    """A stage ran and failed (e.g. an export parity check)."""

    exit_code = 1


class SelectionError(CompressError):
    """No artifact of a run meets its select block (budget, reference, target)."""

    exit_code = 1
