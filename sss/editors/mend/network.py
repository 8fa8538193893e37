"""MEND's gradient transform: ``[u, δ] -> [ũ, δ̃]`` for every token of an edited layer.

Per edited weight, ``u`` is the layer's input and ``δ`` the gradient of the loss with respect
to the layer's output; the weight's gradient is ``Σ_t δ_t u_tᵀ``. MEND replaces ``u, δ`` by
transformed ``ũ, δ̃`` (Mitchell et al. 2022, Sec. 3):

* the concatenation ``[u, δ]`` is standardised with running statistics (:class:`RunningNorm`);
* a stack of low-rank residual layers maps it, initialised to the identity
  (:class:`LowRankResidual`); each layer first applies a learned scale and shift chosen by the
  edited weight (its "mode"), so weights of the same shape share one network yet are told apart;
* the result is split back into ``ũ`` and ``δ̃``.

One :class:`GradientTransform` serves all edited weights of one shape; :class:`MENDNetworks`
holds them with the learned step size of every edited weight — everything MEND trains.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Standardises features with statistics gathered over training tokens.

    Statistics are kept as float64 sums (count, sum, sum of squares), which merge exactly across
    steps and ranks. Tokens seen during a training step go to the ``pending_*`` buffers and join
    the statistics only in :meth:`commit` — after the optimizer step, summed over ranks — so
    every episode of a step (on every rank) is normalised with the same statistics, and N
    processes train exactly like one.
    """

    def __init__(self, dim: int, eps: float = 1e-7):
        super().__init__()
        self.eps = eps
        for prefix in ("", "pending_"):
            self.register_buffer(prefix + "count", torch.zeros((), dtype=torch.float64))
            self.register_buffer(prefix + "sum", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer(prefix + "sum_sq", torch.zeros(dim, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        # ``.to(dtype)`` / ``.half()`` must not round the sums: they follow the device only.
        originals = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, original in originals.items():
            self._buffers[name] = original.to(self._buffers[name].device)
        return self

    @property
    def ready(self) -> bool:
        return float(self.count) >= 2

    def observe(self, x: torch.Tensor) -> None:
        """Queue the rows of ``x`` [N, dim] for the next :meth:`commit`."""
        x = x.detach().to(torch.float64)
        self.pending_count += x.shape[0]
        self.pending_sum += x.sum(0)
        self.pending_sum_sq += x.pow(2).sum(0)

    def commit(self, reduce=lambda t: t) -> None:
        """Fold the queued rows (summed over ranks by ``reduce``) into the statistics."""
        packed = torch.cat([self.pending_count.view(1), self.pending_sum, self.pending_sum_sq])
        packed = reduce(packed)
        dim = self.sum.shape[0]
        self.count += packed[0]
        self.sum += packed[1:1 + dim]
        self.sum_sq += packed[1 + dim:]
        for name in ("pending_count", "pending_sum", "pending_sum_sq"):
            getattr(self, name).zero_()

    def mean_std(self) -> Tuple[torch.Tensor, torch.Tensor]:
        n = self.count
        mean = self.sum / n
        # Unbiased variance; clamped because the two sums can cancel to a tiny negative.
        var = ((self.sum_sq - n * mean.pow(2)) / (n - 1)).clamp_min(0.0)
        return mean, var.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            raise ValueError("MEND's input normalisation has no statistics yet: train the editor (fit), load a "
                             "trained one (MEND.load), or call init_statistics(requests) first")
        mean, std = self.mean_std()
        return (x - mean.to(x.dtype)) / (std.to(x.dtype) + self.eps)


class LowRankResidual(nn.Module):
    """``x' = s_m·x + t_m``, then ``x' + act(U V x' + b)``: the identity while ``U = 0, b = 0``.

    ``s_m, t_m`` are the scale and shift of mode ``m`` (one mode per edited weight), initialised
    to 1 and 0. ``V`` starts random (Xavier) so ``U`` receives a gradient from the first step.
    """

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, dim))
        nn.init.xavier_uniform_(self.down)
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: Union[int, torch.Tensor]) -> torch.Tensor:
        """``mode``: one mode for all rows, or a [N] index tensor giving each row's mode."""
        x = x * self.mode_scale[mode] + self.mode_shift[mode]
        hidden = (x @ self.down.T) @ self.up.T + self.bias
        return x + (torch.relu(hidden) if self.relu else hidden)


class GradientTransform(nn.Module):
    """Maps ``u`` [N, d_in] and ``δ`` [N, d_out] to ``ũ, δ̃`` for all weights of one shape."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, n_hidden: int, n_modes: int, normalize: bool):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        width = in_dim + out_dim
        self.rank = min(rank, width)
        self.norm = RunningNorm(width) if normalize else None
        # n_hidden layers with a ReLU, then one linear layer (as MEND's IDMLP).
        self.layers = nn.ModuleList(LowRankResidual(width, self.rank, n_modes, relu=i < n_hidden)
                                    for i in range(n_hidden + 1))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: Union[int, torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([u, delta], dim=-1)
        if self.norm is not None:
            if self.training:
                self.norm.observe(x)
            x = self.norm(x)
        for layer in self.layers:
            x = layer(x, mode)
        return x[:, :self.in_dim], x[:, self.in_dim:]


def shape_key(in_dim: int, out_dim: int) -> str:
    return f"{in_dim}x{out_dim}"


class MENDNetworks(nn.Module):
    """Every trained piece of MEND: one transform per weight shape and a step size per weight.

    ``weights`` lists ``(parameter name, in_dim, out_dim)`` of the edited weights, in order; the
    ``i``-th weight's step size is ``edit_lrs[i]`` and its mode within its shape's transform is
    its rank among the weights of that shape.
    """

    def __init__(self, weights: Sequence[Tuple[str, int, int]], rank: int, n_hidden: int, normalize: bool,
                 init_edit_lr: float):
        super().__init__()
        self.weight_names: List[str] = [name for name, _, _ in weights]
        groups: Dict[str, List[str]] = {}
        self.route: Dict[str, Tuple[str, int]] = {}
        for name, in_dim, out_dim in weights:
            key = shape_key(in_dim, out_dim)
            groups.setdefault(key, []).append(name)
            self.route[name] = (key, len(groups[key]) - 1)
        dims = {shape_key(i, o): (i, o) for _, i, o in weights}
        self.transforms = nn.ModuleDict({
            key: GradientTransform(*dims[key], rank=rank, n_hidden=n_hidden, n_modes=len(names), normalize=normalize)
            for key, names in groups.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(weights),), float(init_edit_lr)))

    def transform(self, name: str, u: torch.Tensor, delta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        key, mode = self.route[name]
        return self.transforms[key](u, delta, mode)

    def transform_all(self, factors: Dict[str, Tuple[torch.Tensor, torch.Tensor]]
                      ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`transform` of every weight in ``factors``, one pass per shape.

        The tokens of all weights that share a transform go through it as one matrix (each row
        with its weight's mode), so each of the transform's matrices is read once per edit
        instead of once per weight: at a few tokens per edit the transform is bound by reading
        those matrices, not by arithmetic. Row by row the result is :meth:`transform`'s.
        """
        groups: Dict[str, List[str]] = {}
        for name in factors:
            groups.setdefault(self.route[name][0], []).append(name)
        out = {}
        for key, names in groups.items():
            if len(names) == 1:
                out[names[0]] = self.transform(names[0], *factors[names[0]])
                continue
            sizes = [factors[n][0].shape[0] for n in names]
            device = factors[names[0]][0].device
            modes = torch.cat([torch.full((size,), self.route[n][1], dtype=torch.long, device=device)
                               for n, size in zip(names, sizes)])
            u, delta = self.transforms[key](torch.cat([factors[n][0] for n in names]),
                                            torch.cat([factors[n][1] for n in names]), modes)
            for n, u_n, delta_n in zip(names, u.split(sizes), delta.split(sizes)):
                out[n] = (u_n, delta_n)
        return out

    def edit_lr(self, name: str) -> torch.Tensor:
        return self.edit_lrs[self.weight_names.index(name)]

    def norms(self) -> List[RunningNorm]:
        return [t.norm for t in self.transforms.values() if t.norm is not None]

    def network_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "edit_lrs"]
