"""The LM head only where a loss reads it: the one home of that idea, for every editor and the metrics.

* :mod:`.columns` — which columns of a teacher-forced batch the losses read (the target window,
  the tail that holds every prediction) and the narrow batch that matches them;
* :mod:`.logits` — logits at those columns only (the backbone on the whole sequence, the head
  on the columns), the same for a regularizer's loss and penalty, and the metrics' selection;
* :mod:`.frozen` — the contiguous ``W^T`` of a frozen head;
* :mod:`.gradient` — the NLL's gradient at the head's input in one pass over the head.
"""
from .columns import at_columns, target_tail, target_window
from .frozen import transposed
from .gradient import nll_hidden_gradient, split_head
from .logits import (final_hidden, frozen_head, head_on_window, logits_at, logits_selection, predicting_logits,
                     window_logits, window_loss_and_penalty)

__all__ = ["at_columns", "target_tail", "target_window", "transposed", "nll_hidden_gradient", "split_head",
           "final_hidden", "frozen_head", "head_on_window", "logits_at", "logits_selection", "predicting_logits",
           "window_logits", "window_loss_and_penalty"]
