"""Which requests each training episode edits: a pure function of the requests, the seed and its index."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from ..data import EditRequest, LocalityProbe
from .config import Episode


class EpisodeStream:
    """Episode ``k`` of a run, as a pure function of ``(requests, edit_batch_size, seed, k)``.

    Each epoch is a fresh seeded permutation cut into ``len(requests) // edit_batch_size``
    episodes (the remainder is dropped for that epoch; the next permutation differs).
    """

    def __init__(self, requests: Sequence[EditRequest], edit_batch_size: int, seed: int, shuffle: bool = True):
        self.requests = list(requests)
        self.edit_batch_size = edit_batch_size
        self.seed = seed
        self.shuffle = shuffle
        if len(self.requests) < edit_batch_size:
            raise ValueError(f"need at least edit_batch_size={edit_batch_size} requests, got {len(self.requests)}")
        if len(self.requests) < 2 and not self.requests[0].locality:
            raise ValueError("a request without locality probes borrows another request's prompt; give at least 2")
        self.per_epoch = len(self.requests) // edit_batch_size
        self._order_cache: Dict[int, List[int]] = {}

    def __len__(self) -> int:
        """Episodes in one epoch."""
        return self.per_epoch

    def _order(self, epoch: int) -> List[int]:
        if epoch not in self._order_cache:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(len(self.requests), generator=generator).tolist()
            else:
                order = list(range(len(self.requests)))
            self._order_cache = {epoch: order}  # one epoch at a time is all a run needs
        return self._order_cache[epoch]

    def episode(self, k: int) -> Episode:
        epoch, slot = divmod(k, self.per_epoch)
        order = self._order(epoch)
        n, size = len(order), self.edit_batch_size
        positions = range(slot * size, (slot + 1) * size)
        requests = tuple(self.requests[order[p]] for p in positions)
        locality = []
        for p, request in zip(positions, requests):
            if request.locality:
                locality.append(request.locality[epoch % len(request.locality)])
            else:
                # Another request, a batch-width away in this epoch's order: out of this episode
                # whenever the data has at least two batches.
                other = self.requests[order[(p + size) % n]]
                if other is request:
                    other = self.requests[order[(p + 1) % n]]
                locality.append(LocalityProbe(other.prompt, other.target_true or other.target_new, "other_request"))
        return Episode(requests, tuple(locality), k)


# ----------------------------------------------------------------------------------------------
