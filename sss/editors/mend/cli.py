"""How ``sss eval --editor mend --checkpoint DIR`` builds its editor."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def build_for_eval(args, model, tokenizer, regularizer):
    """A trained MEND from ``--checkpoint`` (a folder from ``save``, or a training run's folder).

    SSS shapes MEND during training, not during an edit, so whether a run counts as "w/ SSS"
    comes from the checkpoint; a ``--sss-c`` that disagrees with it is reported and ignored.
    """
    from .editor import MEND

    if getattr(args, "checkpoint", None) is None:
        raise ValueError("--editor mend needs --checkpoint DIR: a trained MEND (train one with 'sss train mend')")
    editor = MEND.load(args.checkpoint, model, tokenizer, progress=getattr(args, "progress", True))
    trained = editor.regularizer.describe() if editor.regularizer is not None else None
    wanted = regularizer.describe() if regularizer is not None else None
    if trained != wanted:
        logger.warning("MEND applies SSS during training only: the checkpoint was trained with %s; ignoring the "
                       "command line's %s", trained or "no regularizer", wanted or "no regularizer")
    return editor
