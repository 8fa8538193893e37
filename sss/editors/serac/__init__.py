"""SERAC: an edit memory, a scope classifier and a counterfactual model (one idea per module).

* :mod:`.memory` — the edit memory (entries, cached classifier keys, save/load);
* :mod:`.encoder` — the sentence encoder (bundled MiniLM by default);
* :mod:`.classifier` — scope classifiers (bi-encoder with learned similarity, cross-encoder);
* :mod:`.conditioning` — how an edit is put in front of an input;
* :mod:`.routed` — the routed system that behaves like a causal LM (``editor.model``);
* :mod:`.objective` — the training losses and the routed system's validation accuracy;
* :mod:`.config` — :class:`SERACConfig`;
* :mod:`.editor` — :class:`SERAC`: editing, training hooks, checkpoints.
"""
from .classifier import CrossEncoderScopeClassifier, EmbeddingScopeClassifier, ScopeClassifier, build_classifier
from .config import SERACConfig
from .editor import SERAC, MemoryEditHandle
from .encoder import SentenceEncoder, minilm_folder
from .memory import EditMemory, MemoryEntry
from .routed import RoutedModel, Routing

__all__ = ["SERAC", "SERACConfig", "MemoryEditHandle", "EditMemory", "MemoryEntry", "ScopeClassifier",
           "EmbeddingScopeClassifier", "CrossEncoderScopeClassifier", "build_classifier", "SentenceEncoder",
           "minilm_folder", "RoutedModel", "Routing"]
