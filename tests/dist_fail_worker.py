"""`compress run` with a fault on one rank (started by torchrun in tests/test_distributed.py):
on the rank named by argv[1], the second training step raises; every other rank runs the
real CLI unchanged."""

from __future__ import annotations

import os
import sys

import compress.training
from compress.cli import app

FAILING_RANK = sys.argv.pop(1)
train_loop = compress.training.train_loop


def failing_train_loop(model, examples, collate, schedule, loss_fn, *args, **kwargs):
    calls = []

    def loss_then_fail(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure in the second training step")
        return loss_fn(m, batch)

    return train_loop(model, examples, collate, schedule, loss_then_fail, *args, **kwargs)


if os.environ["RANK"] == FAILING_RANK:
    compress.training.train_loop = failing_train_loop  # stages import it when they run
app(prog_name="compress")
