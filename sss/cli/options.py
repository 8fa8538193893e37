"""The options every command shares, and what turns them into library objects.

Each ``add_*`` function adds one family of options to a parser; each other function reads the
parsed values (``--option``, ``--sss-*``, ``--device``) or sets up what a command runs in
(logging, the torchrun process group).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

from .checks import check_device, coefficient, nonempty, positive_int, seed

from ..data import FORMATS
from ..losses.base import TARGETS as SSS_TARGETS, TOKENS as SSS_TOKENS
from ..losses.sss import REDUCTIONS as SSS_REDUCTIONS

DEFAULT_MODEL = "smollm2-135m"

DATA_HELP = (f"PATH[:format] of a dataset (formats: {', '.join(FORMATS)}; detected from the keys when omitted), "
             "anything datasets.load_dataset accepts, or 'demo' for the built-in demo set")


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=nonempty, default=DEFAULT_MODEL,
                        help="built-in name (smollm2-135m, tiny-gpt2, tiny-llama), Hugging Face hub id or local "
                             "folder (default: %(default)s)")


def add_data_options(parser: argparse.ArgumentParser, *, limit: Optional[int] = None) -> None:
    """``--data``, ``--split``, ``--limit``, ``--seed`` (evaluation's view of a dataset)."""
    parser.add_argument("--data", type=nonempty, default="demo", help=DATA_HELP + " (default: %(default)s)")
    parser.add_argument("--split", default=None, help="dataset split, for sources with several")
    parser.add_argument("--limit", type=positive_int, default=limit,
                        help="evaluate at most N requests (a seeded subset where the reader supports it)" +
                             (" (default: %(default)s)" if limit else "; omitted: all"))
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed for the subset of requests and for each edit (default: %(default)s)")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda' or 'cuda:N' (default: auto)")


def add_editor_options(parser: argparse.ArgumentParser, example: str = "--option steps=10 --option layers=[5]") -> None:
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field of the editor's config, VALUE parsed as JSON when it can be "
                             f"(e.g. {example}); repeatable")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def sss_target(text: str) -> Union[str, int]:
    """``--sss-target``: ``last_hidden``, ``input_embeds`` or a block index ``N``: the residual stream
    entering block ``N`` (its input hidden states), as ``SparsityRegularizer(target=N)`` reads it."""
    if text in SSS_TARGETS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(SSS_TARGETS)} or a block index, got {text!r}")


def add_sss_options(parser: argparse.ArgumentParser, *, sweep: bool, default_c: Optional[List[float]] = None) -> None:
    """``--sss-c`` (one value, or several for a sweep) and the regularizer's options."""
    group = parser.add_argument_group("SSS regularizer")
    if sweep:
        group.add_argument("--sss-c", type=coefficient, nargs="+", default=default_c, metavar="C",
                           help="run with the SSS regularizer at coefficient C (Eq. 10: (1-C)*L_ori + C*SSS); several "
                                "values run a sweep and draw c_sweep.png" +
                                (" (default: %(default)s)" if default_c else "; omitted: without SSS"))
    else:
        group.add_argument("--sss-c", type=coefficient, default=None, metavar="C",
                           help="train with the SSS regularizer: (1-C)*L_ori + C*SSS (Eq. 10); omitted: without SSS")
    group.add_argument("--sss-target", type=sss_target, default="last_hidden", metavar="{last_hidden,input_embeds,N}",
                       help="where the SSS gradient is taken: the final hidden state (the authors' code), the input "
                            "embeddings, or the hidden states entering block N, i.e. its input (default: %(default)s)")
    group.add_argument("--sss-tokens", choices=SSS_TOKENS, default="prompt",
                       help="tokens whose gradients count: the prompt's, or prompt and target (default: %(default)s)")
    group.add_argument("--sss-reduction", choices=SSS_REDUCTIONS, default="mean",
                       help="'mean' over tokens (the paper's 1/m) or 'sum' (the released code) (default: %(default)s)")


def regularizer_from_args(args, C: Optional[float]):
    """The SSSRegularizer the ``--sss-*`` options describe at coefficient ``C`` (None: no regularizer)."""
    if C is None:
        return None
    from ..losses import SSSRegularizer

    return SSSRegularizer(C=C, target=args.sss_target, tokens=args.sss_tokens, reduction=args.sss_reduction)


def parse_pairs(pairs: Sequence[str], flag: str, value: Callable[[str], object], shape: str = "KEY=VALUE") -> dict:
    """``["a=1", ...]`` -> ``{"a": value("1"), ...}``; a malformed pair is a ValueError naming ``flag``."""
    parsed: Dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        try:
            converted = value(text)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes {shape}, got {pair!r}")
        parsed[key.strip()] = converted
    return parsed


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Sequence[str]) -> dict:
    """``["steps=10", "layers=[5]"]`` -> ``{"steps": 10, "layers": [5]}`` (JSON values, else strings)."""
    return parse_pairs(pairs, "--option", _json_or_text)


def device_from_args(name: str, distributed):
    """``--device``: ``auto`` is this rank's device (:func:`sss.distributed.device`)."""
    import torch

    if name == "auto":
        return distributed.device()
    check_device(name)
    return torch.device(name)


@contextlib.contextmanager
def distributed_session() -> Iterator:
    """Join the torchrun process group when launched by torchrun (else one process); always leave it."""
    from .. import distributed

    distributed.init_from_env()
    try:
        yield distributed
    finally:
        distributed.cleanup()


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("transformers", "urllib3", "filelock", "datasets", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
