"""Process-group plumbing for running sss under ``torchrun`` (evaluation and training alike).

Everything here also works without ``torchrun``: with no process group, the rank is 0, the world
has one process, :func:`shard` returns its input and :func:`gather_objects` returns ``[obj]``.
So callers write one code path and ``torchrun --nproc_per_node=N`` turns it into N.

The backend follows the device: NCCL when CUDA is available, gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Set by torchrun (and by torch.distributed.launch) in every worker's environment.
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the environment describes a process group to join."""
    return all(name in os.environ for name in _LAUNCHER_VARIABLES)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: Optional[str] = None) -> bool:
    """Join the process group that ``torchrun`` described; return whether one is active.

    Without torchrun's variables this does nothing (a single process). Calling it twice is
    harmless. On CUDA each rank is pinned to ``LOCAL_RANK``'s device.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    logger.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its own GPU under NCCL, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def shard(items: Sequence[T], *, rank_: Optional[int] = None, world_size_: Optional[int] = None) -> List[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``.

    Strided rather than contiguous so that ranks get similar mixes when ``items`` are sorted by
    size. Every item goes to exactly one rank; ranks differ in length by at most one.
    """
    r = rank() if rank_ is None else rank_
    n = world_size() if world_size_ is None else world_size_
    if not 0 <= r < n:
        raise ValueError(f"rank {r} is outside a world of {n} process(es)")
    return list(items)[r::n]


def gather_objects(obj: Any, *, to_all: bool = False) -> Optional[List[Any]]:
    """Collect one picklable object from every rank, in rank order.

    Returns the list on rank 0 (on every rank with ``to_all=True``) and None elsewhere. The
    objects travel through torch.distributed's own pickling between processes of this job; no
    file is ever unpickled.
    """
    if not is_initialized():
        return [obj]
    gathered: List[Any] = [None] * world_size()
    if to_all:
        dist.all_gather_object(gathered, obj)
        return gathered
    if default_backend() == "nccl" and dist.get_backend() == "nccl":
        # NCCL's gather_object needs the current device set; all_gather_object is the portable path.
        dist.all_gather_object(gathered, obj)
        return gathered if is_main() else None
    dist.gather_object(obj, gathered if is_main() else None, dst=0)
    return gathered if is_main() else None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a seed or a config decided by rank 0)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call when none is active).

    Every rank first waits for the others: a gloo rank that tears its group down while a peer is
    still writing (rank 0 merging the report) can abort the process at exit ("terminate called
    without an active exception"), which torchrun reports as a failed run.
    """
    if is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
