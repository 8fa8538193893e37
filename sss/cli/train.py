"""``sss train EDITOR``: train a trainable editor (MEND, SERAC) from the command line.

Any registered editor with a ``fit(train, val, config)`` method can be trained: it is built as
``cls(model, tokenizer, regularizer=..., progress=..., **options)`` (plus ``model_name=`` when its
constructor takes it) and trained by :func:`sss.train.train`. The same command runs under
``torchrun --nproc_per_node=N -m sss train ...``: every rank loads the model on its own device,
trains on its share of each step's episodes, and rank 0 writes the checkpoints and prints.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import random
import time
from pathlib import Path

from .checks import (check_data, check_device, check_editor_options, loading_data, nonempty, nonempty_path,
                     output_folder, positive_int)
from .options import (DATA_HELP, add_device_option, add_editor_options, add_model_option, add_output_options,
                      add_sss_options, device_from_args, distributed_session, parse_options, parse_pairs,
                      regularizer_from_args)

logger = logging.getLogger("sss.train")


def add_command(subparsers) -> None:
    from ..train import TrainConfig

    from ..editors import EDITORS

    defaults = TrainConfig()
    trainable = [name for name, cls in EDITORS.items() if cls.is_trainable()]
    parser = subparsers.add_parser(
        "train", help=f"train a trainable editor ({', '.join(trainable)}) on edit requests, with or without SSS",
        description="Train an editor's networks with the shared training loop: Adam, gradient accumulation over "
                    "the episodes of a step, clipping, validation every --val-every steps, early stopping on the "
                    "validation edit loss, a checkpoint OUT/best on every new best and OUT/latest to resume from "
                    "(a rerun with the same OUT continues where it stopped). Runs the same under torchrun.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sss train mend --model smollm2-135m --train ../shared/data/zsre/zsre_mend_train-1k.json "
               "--out runs/mend --max-steps 200\n  sss train mend ... --sss-c 0.9 --out runs/mend-sss\n"
               "  torchrun --nproc_per_node=2 -m sss train mend --model tiny-gpt2 --train data.json --out runs/ddp\n"
               "then:\n  sss eval --checkpoint runs/mend --data ... ")
    parser.add_argument("editor", help=f"a trainable editor: {', '.join(trainable)}")
    add_model_option(parser)
    parser.add_argument("--train", type=nonempty, required=True, metavar="PATH[:format]", help="training requests: " + DATA_HELP)
    parser.add_argument("--val", default=None, metavar="PATH[:format]",
                        help="validation requests; omitted: a seeded --val-fraction of --train is held out")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of --train held out for validation when --val is omitted (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use at most N training requests (seeded subset)")
    parser.add_argument("--val-limit", type=positive_int, default=None, help="use at most N validation requests")
    parser.add_argument("--out", type=nonempty_path, required=True,
                        help="folder for best/, latest/ and train_log.jsonl (reused to resume)")
    add_sss_options(parser, sweep=False)
    loop = parser.add_argument_group("training loop (sss.train.TrainConfig)")
    loop.add_argument("--max-steps", type=positive_int, default=defaults.max_steps,
                      help="optimizer steps (default: %(default)s)")
    loop.add_argument("--edit-batch-size", type=positive_int, default=defaults.edit_batch_size,
                      help="requests edited together in one episode (default: %(default)s)")
    loop.add_argument("--episodes-per-step", type=positive_int, default=defaults.episodes_per_step,
                      help="episodes per optimizer step over all ranks: the global batch; each rank accumulates "
                           "gradients over its share (default: %(default)s)")
    loop.add_argument("--lr", action="append", default=[], metavar="GROUP=LR",
                      help="override the learning rate of one parameter group, e.g. network=1e-5 or edit_lr=1e-3 "
                           "(MEND's groups: network, edit_lr); repeatable")
    loop.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                      help="clip the gradient norm (default: %(default)s)")
    loop.add_argument("--val-every", type=positive_int, default=defaults.val_every,
                      help="validate (and save OUT/latest) every N steps (default: %(default)s)")
    loop.add_argument("--val-episodes", type=positive_int, default=defaults.val_episodes,
                      help="validation episodes per validation (default: %(default)s)")
    loop.add_argument("--patience", type=int, default=defaults.patience,
                      help="stop after N validations without a better edit loss; 0: never (default: %(default)s)")
    loop.add_argument("--early-stop-key", default=defaults.early_stop_key,
                      help="validation metric (lower is better) that picks the best checkpoint and early stopping "
                           "watches, e.g. edit_loss or loss (the whole objective) (default: %(default)s)")
    loop.add_argument("--seed", type=int, default=defaults.seed, help="seed (default: %(default)s)")
    loop.add_argument("--no-resume", dest="resume", action="store_false",
                      help="start again from step 0 even when OUT/latest exists; the earlier log and checkpoints "
                           "are moved to OUT/previous-N/, never deleted (also the way out of a damaged OUT/latest)")
    add_editor_options(parser, example="--option rank=256 --option layers=[-1]")
    add_device_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    with distributed_session() as distributed:
        return _run(args, distributed)


def _run(args, distributed) -> int:
    from ..data import load_data
    from ..editors import editor_class
    from ..models import load_model
    from ..train import TrainConfig, checkpoint_to_resume

    # Every check before the model loads: options, loop settings, device, data, the run folder.
    cls = editor_class(args.editor)
    if not cls.is_trainable():
        raise ValueError(f"editor {args.editor!r} is not trainable (it has no fit method)")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    options = parse_options(args.option)
    check_editor_options(cls, options)
    keys = getattr(cls, "validation_keys", ())
    if keys and args.early_stop_key not in keys:
        raise ValueError(f"--early-stop-key {args.early_stop_key!r} is not a validation metric of "
                         f"{cls.display_name}; its metrics are {', '.join(sorted(keys))}")
    config = TrainConfig(edit_batch_size=args.edit_batch_size, episodes_per_step=args.episodes_per_step,
                         max_steps=args.max_steps, lr=parse_lrs(args.lr), grad_clip=args.grad_clip,
                         val_every=args.val_every, val_episodes=args.val_episodes,
                         patience=args.patience or None, early_stop_key=args.early_stop_key, seed=args.seed,
                         out_dir=str(args.out), resume=args.resume, progress=args.progress)
    check_device(args.device)
    for flag, source in (("--train", args.train), ("--val", args.val)):
        if source is not None:
            check_data(source, flag)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file, not a folder")
    checkpoint_to_resume(args.out, args.resume)  # a damaged OUT/latest stops here, naming the file
    started = time.perf_counter()
    with output_folder(args.out) if distributed.is_main() else contextlib.nullcontext(args.out):
        with loading_data(args.train, "--train"):
            train_requests = list(load_data(args.train, limit=args.limit, seed=args.seed))
        if args.val is not None:
            with loading_data(args.val, "--val"):
                val_requests = list(load_data(args.val, limit=args.val_limit, seed=args.seed))
        else:
            train_requests, val_requests = holdout(train_requests, args.val_fraction, args.seed)
            if args.val_limit is not None:
                val_requests = val_requests[:args.val_limit]
        logger.info("%d training and %d validation requests", len(train_requests), len(val_requests))

        model, tokenizer = load_model(args.model, device=device_from_args(args.device, distributed))
        if "model_name" in inspect.signature(cls.__init__).parameters:
            options["model_name"] = args.model
        editor = cls(model, tokenizer, regularizer=regularizer_from_args(args, args.sss_c), progress=args.progress,
                     **options)
        result = editor.fit(train_requests, val_requests, config)
    if distributed.is_main():
        summary = {"steps": result.steps, "best_step": result.best_step, "stopped_early": result.stopped_early,
                   "best_metrics": result.best_metrics, "best_checkpoint": str(Path(args.out) / "best"),
                   "minutes": round((time.perf_counter() - started) / 60, 2)}
        print(json.dumps(summary, indent=2))
    return 0


def holdout(requests, fraction: float, seed: int):
    """``(train, val)``: a seeded ``fraction`` of ``requests`` (at least one) held out, order kept."""
    if len(requests) < 2:
        raise ValueError("need at least 2 requests to hold some out for validation (or pass --val)")
    count = max(1, int(round(len(requests) * fraction)))
    chosen = set(random.Random(seed).sample(range(len(requests)), count))
    return ([r for i, r in enumerate(requests) if i not in chosen], [r for i, r in enumerate(requests) if i in chosen])


def parse_lrs(pairs) -> dict:
    """``["network=1e-5"]`` -> ``{"network": 1e-5}``."""
    return parse_pairs(pairs, "--lr", float, shape="GROUP=LR with a number")
