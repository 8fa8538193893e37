"""Evaluation: metrics (each named by its protocol), the single/batch/sequential protocols, reports."""
from .measure import FAMILIES, MEASUREMENT_VERSION, ProbeSpec, observe, observe_many, probes_of, score
from .metrics import METRICS, PROTOCOLS, agreement, exact_match, greedy_continuations, prob_margin, \
    teacher_forced, token_acc
from .protocols import MODES, evaluate
from .results import EvalResults, summarise

__all__ = ["FAMILIES", "MEASUREMENT_VERSION", "METRICS", "MODES", "PROTOCOLS", "EvalResults", "ProbeSpec", "agreement", "evaluate",
           "exact_match", "greedy_continuations", "observe", "observe_many", "prob_margin", "probes_of", "score",
           "summarise", "teacher_forced", "token_acc"]
