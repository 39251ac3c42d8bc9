"""`python -m compress ...`: the CLI (how launchers such as torchrun start it)."""

from compress.cli import app

app(prog_name="compress")
