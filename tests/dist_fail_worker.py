"""`compress run` with a fault on one rank (started by torchrun in tests/test_distributed.py):
`dist_fail_worker.py MODE RANK run ...`. MODE `raise`: on RANK, the second training step
raises. MODE `hang`: RANK never reaches the run's first collective (it sleeps). Every other
rank runs the real CLI unchanged."""

from __future__ import annotations

import os
import sys
import time

import compress.pipeline
import compress.training
from compress.cli import app

MODE, FAULTY_RANK = sys.argv.pop(1), sys.argv.pop(1)
train_loop = compress.training.train_loop


def failing_train_loop(model, examples, collate, schedule, loss_fn, *args, **kwargs):
    calls = []

    def loss_then_fail(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure in the second training step")
        return loss_fn(m, batch)

    return train_loop(model, examples, collate, schedule, loss_then_fail, *args, **kwargs)


def hanging(*args, **kwargs):
    time.sleep(600)


if os.environ["RANK"] == FAULTY_RANK:
    if MODE == "raise":
        compress.training.train_loop = failing_train_loop  # stages import it when they run
    elif MODE == "hang":
        compress.pipeline._same_data_on_every_rank = hanging
app(prog_name="compress")
