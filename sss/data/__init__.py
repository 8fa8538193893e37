"""Edit requests, dataset readers and tokenization. Imports nothing else of `sss`."""
from .requests import EditRequest, LocalityProbe, PortabilityProbe, Probe, as_request_list
from .tokenize import (IGNORE_INDEX, PairBatch, PromptBatch, continuation, encode_for, encode_pairs, encode_prompts,
                       pad_id, pad_sequences)
from .probes import (CATEGORY_TITLES, DISTRACT_NEIGHBOR, FORGETFULNESS, LOCALITY_CATEGORIES, NEIGHBORHOOD, ONE_HOP,
                     PORTABILITY_CATEGORIES, POST_NEIGHBOR, PRE_NEIGHBOR, REVERSED_RELATION, SUBJECT_REPLACE,
                     UNRELATED_ATTRIBUTE)
from .readers import FORMATS, ReadStats, RequestList, detect_format, load_data, load_requests, parse_source
from .demo import DEMO_PATH, demo_requests

__all__ = [
    "EditRequest", "LocalityProbe", "PortabilityProbe", "Probe", "as_request_list",
    "IGNORE_INDEX", "PairBatch", "PromptBatch", "continuation", "encode_for", "encode_pairs", "encode_prompts",
    "pad_id", "pad_sequences",
    "FORMATS", "ReadStats", "RequestList", "detect_format", "load_data", "load_requests", "parse_source",
    "DEMO_PATH", "demo_requests",
    "LOCALITY_CATEGORIES", "PORTABILITY_CATEGORIES", "CATEGORY_TITLES", "NEIGHBORHOOD", "PRE_NEIGHBOR",
    "POST_NEIGHBOR", "DISTRACT_NEIGHBOR", "UNRELATED_ATTRIBUTE", "FORGETFULNESS", "SUBJECT_REPLACE",
    "REVERSED_RELATION", "ONE_HOP",
]
