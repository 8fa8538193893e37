"""``sss stats``: compute (or find in the cache) the key statistics ROME and MEMIT read.

``E[k kᵀ]`` of the inputs of each named block's MLP output projection over a corpus
(:mod:`sss.stats`); a long run shows progress and resumes where an interrupted one stopped.
"""
from __future__ import annotations

import time

from .checks import check_device, nonempty, positive_int, seed
from .options import add_device_option, add_model_option, add_output_options


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="compute and cache the key statistics (E[k k^T] of MLP keys) that ROME and MEMIT read",
        description="For each block of --layers, accumulate E[k k^T] of the inputs of its MLP output projection "
                    "over --tokens tokens of --corpus, in float64, into the cache ($SSS_CACHE/stats); a cached "
                    "result for the same weights is reused, one for other weights refused, an interrupted run "
                    "resumed.")
    add_model_option(parser)
    parser.add_argument("--layers", type=int, nargs="+", required=True, metavar="N",
                        help="blocks whose MLP keys to measure (negative counts from the end)")
    parser.add_argument("--corpus", type=nonempty, default="model-samples",
                        help="'model-samples' (text the model samples, seeded; the default), a .txt or .jsonl "
                             "file or a folder of them, or a datasets id with a 'text' column")
    parser.add_argument("--tokens", type=positive_int, default=None,
                        help="tokens to accumulate over (default: 10 x the key width)")
    parser.add_argument("--max-length", type=positive_int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per pass (default: 8)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the model's samples (default: 0)")
    add_device_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..models import load_model, num_blocks
    from ..stats import key_second_moment, stats_folder

    if args.device != "auto":
        check_device(args.device)
    device = None if args.device == "auto" else torch.device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    for block in args.layers:
        if not -num_blocks(model) <= block < num_blocks(model):
            raise ValueError(f"--layers {block}: the model has {num_blocks(model)} blocks (0 to {num_blocks(model) - 1})")
        started = time.perf_counter()
        moment = key_second_moment(model, tokenizer, block, corpus=args.corpus, tokens=args.tokens, seed=args.seed,
                                   batch_size=args.batch_size, max_length=args.max_length, progress=args.progress)
        tokens = args.tokens or 10 * moment.shape[0]
        folder = stats_folder(model, block % num_blocks(model), args.corpus, tokens, args.seed, args.max_length)
        eigenvalues = torch.linalg.eigvalsh(moment)
        print(f"block {block}: E[k k^T] {tuple(moment.shape)} over {tokens} tokens, trace {moment.trace():.4g}, "
              f"eigenvalues {eigenvalues.min():.3g} to {eigenvalues.max():.3g}; {folder} "
              f"({time.perf_counter() - started:.1f} s)")
    return 0
