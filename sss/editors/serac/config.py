"""SERAC's hyper-parameters, checked on construction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core import OuterLossConfig
from ..core.config import require_bool, require_positive_integer, require_real
from .classifier import CLASSIFIERS


@dataclass
class SERACConfig(OuterLossConfig):
    """SERAC's hyper-parameters. Defaults: the paper's / EasyEdit's (``lr=1e-5``, ``c_e=0.1``,
    threshold 0.5) where they say; the rest are sss's choices, documented in docs/serac.md.

    ``classifier``: "embedding" (bi-encoder with learned similarity) or "cross" (cross-encoder).
    ``encoder``: the classifier's sentence encoder, None for the bundled MiniLM.
    ``counterfactual``: a model name/path for the counterfactual model (it must share the base
    model's tokenizer); None copies the base model (the paper's setting). ``cf_layers``: train
    only the counterfactual model's last N blocks and final norm (embeddings frozen, backward
    stops below them: a CPU budget setting); None trains all of it (the paper's setting).
    ``lr`` trains the counterfactual model, ``cls_lr`` the classifier's encoder and ``head_lr``
    its freshly initialised similarity/head.
    """

    threshold: float = 0.5
    classifier: str = "embedding"
    encoder: Optional[str] = None
    encoder_max_length: int = 128
    train_encoder: bool = True
    counterfactual: Optional[str] = None
    cf_layers: Optional[int] = None
    separator: str = "\n"
    lr: float = 1e-5
    cls_lr: float = 1e-5
    head_lr: float = 1e-3
    c_cls: float = 1.0

    def __post_init__(self):
        require_real("threshold", self.threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
        for name in ("encoder", "counterfactual"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a model name or folder (a non-empty string) or None, got {value!r}")
        require_positive_integer("encoder_max_length", self.encoder_max_length)
        require_bool("train_encoder", self.train_encoder)
        for name in ("lr", "cls_lr", "head_lr"):
            require_real(name, getattr(self, name), positive=True)
        require_real("c_cls", self.c_cls, minimum=0.0)
        if self.cf_layers is not None:
            require_positive_integer("cf_layers", self.cf_layers, extra=" (a number of blocks) or None")
        if not isinstance(self.separator, str):
            raise ValueError(f"separator must be a string, got {type(self.separator).__name__}")
        super().__post_init__()  # c_e, c_loc
