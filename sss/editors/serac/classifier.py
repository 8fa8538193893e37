"""SERAC's scope classifier: is an input inside the scope of a stored edit?

Every classifier maps ``(inputs [N], edit texts [M])`` to logits ``[N, M]``; the probability
that input ``i`` is in the scope of edit ``j`` is ``sigmoid(logits[i, j])``. Two kinds:

* :class:`EmbeddingScopeClassifier` (the default): inputs and edits are embedded separately by a
  sentence encoder, and a learned similarity (a linear map initialised to the identity, cosine,
  then a learned scale and offset) compares them. Edit embeddings depend on the edit only, so
  the memory caches them ("keys") and routing costs one encoder pass over the inputs.
* :class:`CrossEncoderScopeClassifier`: the encoder reads each (edit, input) pair together and a
  linear head scores it. Usually sharper, but it costs N x M encoder passes and caches nothing.

``revision`` counts weight changes (training, loading) so cached keys know when they are stale.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import SentenceEncoder

CLASSIFIERS = ("embedding", "cross")


class ScopeClassifier(nn.Module, ABC):
    """Base of every scope classifier; subclasses implement :meth:`logits`."""

    def __init__(self):
        super().__init__()
        self._changes = 0

    @property
    def revision(self) -> int:
        """Changes whenever any weight changes in place (optimizer steps, ``load_state_dict``),
        read from the tensors' own version counters; caches keyed by it never go stale."""
        return self._changes + sum(p._version for p in self.parameters())

    def mark_changed(self) -> None:
        """Declare the weights changed (e.g. after replacing a tensor rather than updating it)."""
        self._changes += 1

    def keys(self, edit_texts: Sequence[str]) -> Optional[torch.Tensor]:
        """What the memory may cache per edit ([M, D]), or None when nothing is cacheable."""
        return None

    @abstractmethod
    def logits(self, inputs: Sequence[str], edit_texts: Sequence[str],
               keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """In-scope logits [N inputs, M edits]; ``keys`` are this classifier's cached edit keys."""

    def encoder_parameters(self) -> List[nn.Parameter]:
        """The pretrained encoder's weights (trained with a small learning rate)."""
        return []

    def head_parameters(self) -> List[nn.Parameter]:
        """The freshly initialised parts (trained with a larger learning rate)."""
        return [p for p in self.parameters()]

    def describe(self) -> dict:
        return {"kind": type(self).__name__}


class EmbeddingScopeClassifier(ScopeClassifier):
    """Bi-encoder with a learned similarity: ``scale * cos(W e(input), W e(edit)) + offset``.

    ``W`` starts as the identity and ``scale``/``offset`` so that the untrained classifier routes
    when the cosine of the raw embeddings exceeds ``init_cosine`` (0.6: MiniLM puts ZsRE
    rephrasings of an edit at ~0.8 and unrelated questions below ~0.4).
    """

    def __init__(self, encoder: SentenceEncoder, *, init_scale: float = 20.0, init_cosine: float = 0.6):
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.encoder = encoder
        dim = encoder.dim
        self.projection = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(dim))
        # The scale is learned in log space so it stays positive.
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.offset = nn.Parameter(torch.tensor(-init_scale * init_cosine))
        self.to(encoder.device)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.projection(self.encoder(texts)), dim=-1)

    def keys(self, edit_texts: Sequence[str]) -> torch.Tensor:
        return self.embed(edit_texts)

    def logits(self, inputs, edit_texts, keys=None):
        keys = self.keys(edit_texts) if keys is None else keys
        if len(keys) != len(edit_texts):
            raise ValueError(f"got {len(keys)} cached keys for {len(edit_texts)} edits")
        queries = self.embed(inputs)
        return self.log_scale.exp() * queries @ keys.T.to(queries.dtype) + self.offset

    def encoder_parameters(self):
        return list(self.encoder.parameters())

    def head_parameters(self):
        return [self.projection.weight, self.log_scale, self.offset]

    def describe(self) -> dict:
        return {"kind": "embedding", "scale": float(self.log_scale.exp()), "offset": float(self.offset)}


class CrossEncoderScopeClassifier(ScopeClassifier):
    """Cross-encoder: ``head(encoder(edit, input))`` for every (input, edit) pair.

    The head's bias starts at ``init_bias`` (-3) so the untrained classifier routes nothing.
    """

    def __init__(self, encoder: SentenceEncoder, *, init_bias: float = -3.0, pair_batch: int = 256):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, 1)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02)
            self.head.bias.fill_(init_bias)
        self.pair_batch = int(pair_batch)
        self.to(encoder.device)

    def logits(self, inputs, edit_texts, keys=None):
        inputs, edit_texts = list(inputs), list(edit_texts)
        n, m = len(inputs), len(edit_texts)
        if n == 0 or m == 0:
            return torch.zeros(n, m, device=self.encoder.device)
        firsts = [edit for _ in inputs for edit in edit_texts]
        seconds = [text for text in inputs for _ in edit_texts]
        # Chunks bound the memory of N x M encoder passes; the result is the same.
        scores = [self.head(self.encoder(firsts[i:i + self.pair_batch], seconds[i:i + self.pair_batch])).squeeze(-1)
                  for i in range(0, len(firsts), self.pair_batch)]
        return torch.cat(scores).view(n, m)

    def encoder_parameters(self):
        return list(self.encoder.parameters())

    def head_parameters(self):
        return list(self.head.parameters())

    def describe(self) -> dict:
        return {"kind": "cross"}


def build_classifier(kind: str, encoder: Optional[str] = None, *, max_length: int = 128) -> ScopeClassifier:
    """A fresh classifier of ``kind`` ("embedding" or "cross") over ``encoder`` (None: MiniLM)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    sentence_encoder = SentenceEncoder.load(encoder, max_length=max_length)
    if kind == "embedding":
        return EmbeddingScopeClassifier(sentence_encoder)
    return CrossEncoderScopeClassifier(sentence_encoder)
