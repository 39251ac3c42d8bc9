"""`python -m compress ...`: the same commands as the `compress` script (how launchers such as
torchrun start it)."""

from compress.cli import app

app(prog_name="compress")
