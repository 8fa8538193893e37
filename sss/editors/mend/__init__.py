"""MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022): a trained gradient transform.

``network``: the transform of each edited layer's factors; ``hooks``: the inner pass that
captures them (its loss gradient at the last hidden states: ``sss.losses.head.gradient``, the LM head read once); ``editor``: the ``MEND`` editor (the edit and its checkpoints); ``objective``:
how it is trained (the outer loss of an episode, ``fit``).
"""
from .editor import MEND, MENDConfig
from .network import GradientTransform, LowRankResidual, MENDNetworks, RunningNorm

__all__ = ["MEND", "MENDConfig", "GradientTransform", "LowRankResidual", "MENDNetworks", "RunningNorm"]
