"""Runs split over processes started by ``torchrun`` (one machine or several).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address); without
them everything here is a single process and no process group is created. CPU runs use gloo, CUDA
runs NCCL. Commands split their work with :func:`shard` and let rank 0 alone write merged outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import InvalidInputError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a run: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when several processes share the run (a process group exists)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes merged outputs."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun") from None


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun with more than one process."""
    return _env_int("WORLD_SIZE", 1) > 1


def init_distributed(device: torch.device | str = "cpu") -> DistributedContext:
    """Join the torchrun process group (gloo for CPU, NCCL for CUDA), or return the single-process context.

    Idempotent: a second call returns the context of the existing group. For CUDA the process is bound
    to ``cuda:LOCAL_RANK``, so pass the device you resolved for this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE_PROCESS
    context = DistributedContext(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
    if not dist.is_available():
        raise InvalidInputError("this torch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend)
    return context


def process_device(device: torch.device, context: DistributedContext) -> torch.device:
    """The device this rank uses: ``cuda:LOCAL_RANK`` under a multi-process CUDA run, else ``device``."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def shard(items: Sequence[T], context: DistributedContext) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank`` (order kept)."""
    return list(items[context.rank :: context.world_size])


def gather_to_main(value: Any, context: DistributedContext) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0; ``None`` on the other ranks."""
    if not context.enabled:
        return [value]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_main(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` (picklable) on every rank."""
    if not context.enabled:
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: DistributedContext) -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group at the end of a command (no-op for one process)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
