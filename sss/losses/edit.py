"""The editors' own objectives: the edit NLL (Eq. 4) and the locality KL (Eq. 5)."""
from __future__ import annotations

import torch

from ..data import PairBatch


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # Log-softmax in half precision loses the small probabilities; never downcast float64.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def target_log_probs(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Log-probability of each label under teacher forcing, [B, L-1], zero off the target.

    Position t's token is predicted by the logits at t-1, so logits drop their last column and
    labels their first.
    """
    log_probs = torch.log_softmax(_at_least_fp32(logits[:, :-1]), dim=-1)
    labels = batch.labels[:, 1:]
    mask = batch.target_mask[:, 1:]
    picked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def target_nll(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """J(x, y) of every example: the mean NLL of its target tokens, teacher forced. Shape [B]."""
    total = -target_log_probs(logits, batch).sum(-1)
    return total / batch.target_lengths.to(total.dtype)


def first_target_nll(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """J's term for the first target token, ``-log p(y_1 | prompt) / T``, per row. Shape [B].

    ``logits`` are ``[B, 1, V]`` at each row's last prompt position (``target_nll`` reads the
    same logits for the same label, divided by the same target length). Where a penalty needs
    only J's gradient at the last prompt position (``Shortcuts.last_prompt_gradient_only``), this
    term has the same gradient there and needs the prompt alone.
    """
    log_probs = torch.log_softmax(_at_least_fp32(logits[:, 0]), dim=-1)
    first = batch.labels.gather(1, batch.prompt_lengths.unsqueeze(1))  # the token right after the prompt
    return -log_probs.gather(1, first).squeeze(1) / batch.target_lengths.to(log_probs.dtype)


def prompt_last_nll(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """FT-L's objective (EasyEdit's ``prompt_last``), per example. Shape [B].

    Every target token is scored at the *last prompt position* and the negative log-probs are
    averaged over the target's tokens; only the prediction right after the prompt is trained.
    """
    rows = torch.arange(len(batch), device=logits.device)
    last = torch.log_softmax(_at_least_fp32(logits[rows, batch.last_prompt_positions]), dim=-1)  # [B, V]
    labels = batch.labels.clamp_min(0)
    picked = last.gather(-1, labels) * batch.target_mask  # [B, L]
    return -picked.sum(-1) / batch.target_lengths.to(picked.dtype)


def locality_kl(pre_logits: torch.Tensor, post_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_pre || p_post) averaged over the masked positions (Eq. 5)."""
    pre = torch.log_softmax(_at_least_fp32(pre_logits), dim=-1)
    post = torch.log_softmax(_at_least_fp32(post_logits), dim=-1)
    per_position = (pre.exp() * (pre - post)).sum(-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def edit_loss(logits: torch.Tensor, batch: PairBatch, objective: str = "target_new") -> torch.Tensor:
    """Per-example edit loss by objective name: ``"target_new"`` (full NLL) or ``"prompt_last"``."""
    if objective == "target_new":
        return target_nll(logits, batch)
    if objective == "prompt_last":
        return prompt_last_nll(logits, batch)
    raise ValueError(f"unknown objective {objective!r}; use 'target_new' or 'prompt_last'")
