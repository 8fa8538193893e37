"""What the ranks of a torchrun training run share: sums, gathers and each rank's RNG state."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List

import torch
import torch.distributed as dist

from .. import distributed

logger = logging.getLogger("sss.train")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if not distributed.is_initialized() or distributed.world_size() == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    work = tensor.detach().to(device).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def rng_states() -> Dict[str, torch.Tensor]:
    """Every rank's torch RNG state (CPU, and CUDA where present), gathered to all ranks."""
    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.cuda.get_rng_state()
    states = {}
    for key, value in mine.items():
        parts = [value] if distributed.world_size() == 1 else all_gather(value)
        for r, part in enumerate(parts):
            states[f"{key}.rank{r}"] = part
    return states


def all_gather(tensor: torch.Tensor) -> List[torch.Tensor]:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    work = tensor.to(device)
    parts = [torch.empty_like(work) for _ in range(distributed.world_size())]
    dist.all_gather(parts, work)
    return [p.cpu() for p in parts]


def set_rng_states(folder: Path) -> None:
    from .checkpoint import load_tensors

    states = load_tensors(folder / "rng.safetensors")
    r = distributed.rank()
    if f"cpu.rank{r}" not in states:
        logger.warning("the checkpoint holds no RNG state for rank %d (another world size?); reseeding", r)
        return
    torch.set_rng_state(states[f"cpu.rank{r}"])
    if torch.cuda.is_available() and f"cuda.rank{r}" in states:
        torch.cuda.set_rng_state(states[f"cuda.rank{r}"])
