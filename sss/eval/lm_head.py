"""Teacher forcing without the LM-head work its results cannot need.

The metrics read the logits only where a target token is predicted (``sss.losses.head``'s
``predicting_logits`` asks a Hugging Face causal LM for those positions only), and a rival answer
whose tokens are predicted from the same contexts as the answer's is read from the answer's row.
"""
from __future__ import annotations

from typing import Sequence


def shares_context(target_ids: Sequence[int], alternative_ids: Sequence[int]) -> bool:
    """Whether every token of ``alternative_ids`` is predicted at a position of the pair's row
    whose context is the alternative's own: token j is, when both targets agree on their first
    j tokens (the prompt's last position predicts token 0 of either)."""
    common = next((j for j, (a, b) in enumerate(zip(target_ids, alternative_ids)) if a != b),
                  min(len(target_ids), len(alternative_ids)))
    return 0 < len(alternative_ids) <= min(common + 1, len(target_ids))
