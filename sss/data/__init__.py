"""Edit requests, dataset readers and tokenization. Imports nothing else of `sss`."""
from .requests import EditRequest, LocalityProbe, PortabilityProbe, Probe
from .tokenize import IGNORE_INDEX, PairBatch, PromptBatch, continuation, encode_pairs, encode_prompts

__all__ = [
    "EditRequest", "LocalityProbe", "PortabilityProbe", "Probe",
    "IGNORE_INDEX", "PairBatch", "PromptBatch", "continuation", "encode_pairs", "encode_prompts",
]
