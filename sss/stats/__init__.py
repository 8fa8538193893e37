"""Key statistics: the second moment of an MLP output projection's inputs over a text corpus,
cached per (weights, block, corpus, token count) and resumable (:mod:`.moment`, :mod:`.corpus`).

ROME and MEMIT weigh their closed-form updates by it; update constraints (a null-space projection)
read it too.
"""
from .corpus import MODEL_SAMPLES, corpus_id, corpus_texts
from .moment import key_second_moment, key_weights_fingerprint, stats_folder

__all__ = ["MODEL_SAMPLES", "corpus_id", "corpus_texts", "key_second_moment", "key_weights_fingerprint",
           "stats_folder"]
