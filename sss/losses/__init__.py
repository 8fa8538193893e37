"""Losses: the edit and locality objectives, and the sparsity regularizers. Knows no editor."""
from .base import Shortcuts, SparsityRegularizer, forward_with_embeddings
from .edit import edit_loss, first_target_nll, locality_kl, prompt_last_nll, target_log_probs, target_nll
from .rebuild import register_regularizer, regularizer_from_description
from .sss import SSSRegularizer
from .recipe import SSSTerms, sss_loss, sss_penalty, sss_terms

__all__ = ["Shortcuts", "SparsityRegularizer", "SSSRegularizer", "forward_with_embeddings", "edit_loss",
           "first_target_nll", "locality_kl",
           "prompt_last_nll", "register_regularizer", "regularizer_from_description", "target_log_probs",
           "target_nll", "SSSTerms", "sss_loss", "sss_penalty", "sss_terms"]
