"""How ``sss eval --editor serac --checkpoint DIR`` builds its editor.

Training needs no code here: ``sss train serac ...`` is the generic trainer of
:mod:`sss.train_cli` (it builds ``SERAC(model, tokenizer, regularizer=..., **options)`` and calls
``fit``).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def build_for_eval(args, model, tokenizer, regularizer):
    """A trained SERAC from ``--checkpoint`` (a ``save`` folder or a training run's folder).

    Without ``--checkpoint`` an *untrained* SERAC is built (MiniLM at its initial similarity, the
    counterfactual model a plain copy of the base model): the baseline training should beat.
    SSS shapes SERAC's counterfactual model during training only, so a ``--sss-c`` at evaluation
    time changes nothing; a disagreement with the checkpoint is reported.
    """
    from ...cli import parse_options
    from .editor import SERAC

    progress = getattr(args, "progress", True)
    options = parse_options(getattr(args, "option", None) or [])  # e.g. --option threshold=0.7
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is None:
        logger.warning("--editor serac without --checkpoint: evaluating an UNTRAINED SERAC "
                       "(train one with 'sss train serac')")
        return SERAC(model, tokenizer, progress=progress, **options)
    editor = SERAC.load(checkpoint, model, tokenizer, progress=progress, **options)
    trained = editor.regularizer.describe() if editor.regularizer is not None else None
    wanted = regularizer.describe() if regularizer is not None else None
    if trained != wanted:
        logger.warning("SERAC applies SSS during training only: the checkpoint was trained with %s; ignoring the "
                       "command line's %s", trained or "no regularizer", wanted or "no regularizer")
    return editor
