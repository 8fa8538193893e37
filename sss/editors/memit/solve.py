"""MEMIT's batch update of one projection: the least-squares change that writes many keys at once.

For keys ``K`` (``[n, d_k]``), the residuals ``R`` (``[n, d_out]``) this layer is to add for them,
and the key statistics ``C``, the change ``Δ`` (``[d_out, d_k]``) minimises

    ||Δ Kᵀ - Rᵀ||²  +  λ · tr(Δ C Δᵀ)

(write the new keys, disturb the keys of the corpus little), whose normal equations give
``Δ (λC + KᵀK) = Rᵀ K``. Solved in float64.
"""
from __future__ import annotations

import torch

__all__ = ["spread_update"]


def spread_update(keys: torch.Tensor, residuals: torch.Tensor, moment: torch.Tensor, weight: float) -> torch.Tensor:
    """``Δ = Rᵀ K (λC + KᵀK)⁻¹``, as ``[d_out, d_k]`` in float64."""
    keys, residuals, moment = keys.double(), residuals.double(), moment.double()
    system = weight * moment + keys.T @ keys  # symmetric positive definite when C is
    return torch.linalg.solve(system, keys.T @ residuals).T  # (Rᵀ K S⁻¹)ᵀ = S⁻¹ Kᵀ R, S symmetric
