"""`python -m compress`: the same commands as the `compress` script."""

from compress.cli import app

app(prog_name="compress")
