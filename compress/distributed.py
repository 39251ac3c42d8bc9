"""Several processes running one recipe (torchrun, accelerate launch): who this process is,
the process group with a bounded time-out, and what rank 0 tells the others.

The launcher, not compress, starts the processes and sets RANK / WORLD_SIZE / LOCAL_RANK;
torch.distributed (through HF Accelerate) carries the collectives. Rank 0 owns the run
directory: the lock, the manifest, the stage directories, every export, quantization,
measurement and the benchmark. All ranks train, each on its shard of the data. Rank 0 tells
the others what to train, and where, through `share` (a broadcast that doubles as a barrier:
nobody reads a directory before rank 0 has prepared it)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from compress.errors import CompressError

log = logging.getLogger(__name__)
TIMEOUT_ENV = "COMPRESS_DIST_TIMEOUT"  # seconds a collective may wait for a peer
DEFAULT_TIMEOUT_S = 1800  # rank 0 may export, quantize and measure between two training stages


@dataclass(frozen=True)
class Launch:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def multi(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CompressError(f"environment variable {name}={value!r} is not an integer (set by the launcher)") from None


def launch() -> Launch:
    """Read the launcher's environment (torchrun and accelerate launch both set these)."""
    world = _env_int("WORLD_SIZE", 1)
    return Launch(rank=_env_int("RANK", 0), world_size=world, local_rank=_env_int("LOCAL_RANK", 0),
                  local_world_size=_env_int("LOCAL_WORLD_SIZE", world))


def timeout_seconds() -> int:
    seconds = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if seconds < 1:
        raise CompressError(f"{TIMEOUT_ENV}={seconds}: must be at least 1 second")
    return seconds


def start(job: Launch) -> None:
    """Join the process group once, before any stage builds an Accelerator: Accelerate's shared
    state keeps this group (and its time-out), so a peer that died or hangs fails every
    collective after the time-out instead of leaving this process waiting for ever."""
    if not job.multi:
        return
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_seconds()))
    if state.num_processes != job.world_size:
        raise CompressError(f"the launcher says WORLD_SIZE={job.world_size} but the process group has "
                            f"{state.num_processes} processes")
    log.debug("%s joined the process group (%s, time-out %d s)", job.describe(), state.backend, timeout_seconds())


def share(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (the others pass None). Also a barrier: it returns on a
    rank only once rank 0 has reached it."""
    import torch.distributed as dist

    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as e:  # gloo/NCCL: a time-out, or the peer's connection closed
        if dist.get_rank() == 0:
            raise
        raise CompressError(f"rank 0 did not answer within {timeout_seconds()} s ({TIMEOUT_ENV}) or its "
                            f"connection closed: it failed or hangs; see its log ({str(e).splitlines()[0][:160]})"
                            ) from None
    return box[0]


def gather_in_order(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank (a rank passes the
    contiguous shard `shard_of` gave it, so the result is the full list in its order)."""
    from accelerate.utils import gather_object

    return gather_object(items)


def shard_of(items: list, job: Launch) -> list:
    """This rank's contiguous share of `items` (sizes differ by at most one)."""
    per, extra = divmod(len(items), job.world_size)
    start = job.rank * per + min(job.rank, extra)
    return items[start : start + per + (1 if job.rank < extra else 0)]


def sum_across_ranks(tensors: list) -> list:
    """Element-wise sums over all ranks (in place, returned for convenience)."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors
