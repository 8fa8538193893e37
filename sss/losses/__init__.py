"""Losses: the edit and locality objectives, and the sparsity regularizers. Knows no editor."""
from .base import SparsityRegularizer, forward_with_embeddings
from .edit import edit_loss, locality_kl, prompt_last_nll, target_log_probs, target_nll
from .sss import SSSRegularizer

__all__ = ["SparsityRegularizer", "SSSRegularizer", "forward_with_embeddings", "edit_loss", "locality_kl",
           "prompt_last_nll", "target_log_probs", "target_nll"]
