"""``sss eval``: edit with one editor, measure every probe before and after, write the reports.

The editor is built from ``--editor`` (a registered name) as ``cls(model, tokenizer,
regularizer=..., progress=..., **options)``, or, with ``--checkpoint DIR``, loaded by
:meth:`sss.editors.Editor.from_checkpoint` (the checkpoint names its editor, so ``--editor``
may be left out). Under ``torchrun --nproc_per_node=N -m sss eval ...`` every rank evaluates
its share of the requests (``single`` and ``batch`` modes) and rank 0 writes the merged report
and prints.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path
from typing import List, Optional

from ..eval.protocols import MODES
from .checks import (check_data, check_device, check_editor_options, loading_data, nonempty_path, output_folder,
                     positive_int)
from .options import (add_data_options, add_device_option, add_editor_options, add_model_option, add_output_options,
                      add_sss_options, device_from_args, distributed_session, parse_options, regularizer_from_args)

logger = logging.getLogger("sss.cli")

DEFAULT_EDITOR = "ft-l"


def add_measurement_options(parser: argparse.ArgumentParser, out: str) -> None:
    """What ``eval`` and ``demo`` share besides model and data: where to write, how to measure."""
    parser.add_argument("--out", type=nonempty_path, default=Path(out),
                        help="folder for the JSON reports (one per run, never overwritten by another run), the "
                             "table of every report in it, and figures (default: %(default)s)")
    parser.add_argument("--eval-batch-size", type=positive_int, default=32,
                        help="most probe rows per forward pass when measuring (default: %(default)s)")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="skip exact_match (greedy generation), the slowest metric")


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="edit with one editor and measure reliability, generality, locality, portability",
        description="Edit a model request by request (or in batches, or sequentially), measure every probe "
                    "before and after, and write a JSON report per run, a Markdown table laid out like the "
                    "paper's Table 1 and figures. Without --sss-c the editor runs without SSS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  sss eval --editor ft-l --model smollm2-135m "
               "--data ../shared/data/counterfact/counterfact-val.json:counterfact --limit 20 --sss-c 0.9 --baseline "
               "--out runs/cf20\n  sss eval --checkpoint runs/mend --data demo   # the editor the checkpoint "
               "records\n\nunder torchrun (single/batch modes):\n  torchrun --nproc_per_node=2 -m sss eval "
               "--model tiny-gpt2 --data demo --limit 6 --out runs/tiny")
    from ..editors import EDITORS, editor_names

    parser.add_argument("--editor", default=None,
                        help=f"registered editor: {', '.join(editor_names())} (default: the one --checkpoint "
                             f"records, else {DEFAULT_EDITOR})")
    trainable = [name for name, cls in EDITORS.items() if cls.is_trainable()]
    parser.add_argument("--checkpoint", type=nonempty_path, default=None,
                        help="trained editor checkpoint folder, or a training run's folder (its best/), for "
                             f"trainable editors ({', '.join(trainable)})")
    add_editor_options(parser)
    add_data_options(parser)
    parser.add_argument("--mode", choices=MODES, default="single",
                        help="single: edit, measure, restore per request (the paper's default); batch: "
                             "--batch-size requests per edit; sequential: edits accumulate, all measured after the "
                             "last (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="requests per edit (batch mode: required; sequential: default 1)")
    parser.add_argument("--measure-each", action="store_true",
                        help="sequential: also measure each request right after its own edit")
    parser.add_argument("--checkpoints", type=positive_int, nargs="+", default=(), metavar="N",
                        help="sequential: also summarise the first N edits after the N-th edit (e.g. 1 10 100), "
                             "drawn as sequential.png")
    parser.add_argument("--edits-at-once", type=positive_int, default=1, metavar="K",
                        help="single mode, FT-L without SSS: train K of the independent edits together (each is "
                             "still measured and undone alone; same weights to float rounding, faster; "
                             "default: %(default)s)")
    parser.add_argument("--baseline", action="store_true", help="with --sss-c: also run the editor without SSS")
    add_model_option(parser)
    add_measurement_options(parser, out="sss-results/eval")
    add_device_option(parser)
    add_output_options(parser)
    add_sss_options(parser, sweep=True)
    parser.set_defaults(func=run)


def run(args) -> int:
    with distributed_session() as distributed:
        return _run(args, distributed)


def _run(args, distributed) -> int:
    from ..data import load_data
    from ..eval import evaluate, report, report_folder
    from ..models import load_model

    main = distributed.is_main()
    args.progress = args.progress and main  # one set of progress bars, not one per rank
    started = time.perf_counter()
    # Every check before the model loads, so a typo fails in a second, not after the load.
    if args.baseline and not args.sss_c:
        raise ValueError("--baseline compares a run with SSS against one without it: give --sss-c C too")
    if args.edits_at_once > 1 and args.mode != "single":
        raise ValueError(f"--edits-at-once applies to --mode single (independent edits), not --mode {args.mode}")
    options = parse_options(args.option)
    cls = editor_class_for(args)
    check_editor_options(cls, options)
    check_device(args.device)
    check_data(args.data)
    with output_folder(args.out) if main else contextlib.nullcontext(Path(args.out)) as out:
        with loading_data(args.data):
            requests = load_data(args.data, limit=args.limit, seed=args.seed, split=args.split)
        check_plan(args, len(requests))
        model, tokenizer = load_model(args.model, device=device_from_args(args.device, distributed))
        cache: dict = {}
        runs = {}
        for C in run_plan(args):
            editor = build_editor(cls, args, model, tokenizer, regularizer_from_args(args, C), options)
            results = evaluate(editor, requests, args.mode, batch_size=args.batch_size,
                               eval_batch_size=args.eval_batch_size, generate=args.generate,
                               measure_each=args.measure_each, checkpoints=list(args.checkpoints), seed=args.seed,
                               progress=args.progress, unedited_cache=cache, edits_at_once=args.edits_at_once)
            runs[C] = results
            if main:
                path = report_folder.write_run_report(out, results, model=args.model, data=args.data,
                                                      extra=run_extra(args, requests))
                logger.info("%s: wrote %s", results.label, path)
        if not main:
            return 0
        with report_folder.locked(out):  # other runs may share --out: the last summary shows every report
            table_path, comparison = report_folder.write_summary(out)
    columns = {r.label: r for r in runs.values()}
    title = f"{args.model} · {args.data} · {len(requests)} requests · mode {args.mode}\n\n"
    table = report_folder.group_table(columns)
    figures = [comparison]
    if args.mode == "sequential" and args.checkpoints:
        figures.append(report.plot_sequential(columns, out / "sequential.png"))
    swept = {C: r for C, r in runs.items() if C is not None}
    if len(swept) > 1:
        figures.append(report.plot_c_sweep(swept, out / "c_sweep.png"))
    print(title + table)
    print(f"requests: {request_ids(requests)}")
    if getattr(args, "study_hint", None):
        print(args.study_hint)
    print(f"wrote {len(runs)} JSON report(s), {table_path} (every report in {out}) and "
          f"{', '.join(f.name for f in figures)} in {time.perf_counter() - started:.0f} s")
    return 0


def check_plan(args, n_requests: int) -> None:
    """The evaluation's own checks (mode, batch size, checkpoints), before the model loads."""
    from ..eval.protocols import check_mode

    check_mode(args.mode, args.batch_size, args.measure_each, list(args.checkpoints))
    beyond = [n for n in args.checkpoints if n > n_requests]
    if beyond:
        raise ValueError(f"--checkpoints {' '.join(map(str, beyond))}: beyond the {n_requests} requests evaluated "
                         "(a checkpoint is a number of edits made)")


def request_ids(requests) -> str:
    """The requests a run edited, by case id (their position where a request has none)."""
    ids = [str(r.case_id) if r.case_id is not None else f"#{i}" for i, r in enumerate(requests)]
    return ", ".join(ids)


def run_extra(args, requests=()) -> dict:
    """What distinguishes a run besides its results' own settings (part of the report's file name),
    and which requests it edited, by case id."""
    return {"limit": args.limit, "split": args.split,
            "checkpoint": None if args.checkpoint is None else str(Path(args.checkpoint).resolve()),
            "request_ids": [r.case_id for r in requests]}


def run_plan(args) -> List[Optional[float]]:
    """The SSS coefficients to run, None meaning without SSS."""
    if not args.sss_c:
        return [None]
    return ([None] if args.baseline else []) + list(dict.fromkeys(args.sss_c))


def editor_class_for(args):
    """The editor class ``--editor`` names, else the one ``--checkpoint`` records, else FT-L."""
    from ..editors import editor_class
    from ..train import checkpoint_editor, resolve_checkpoint, verify_checkpoint

    if args.checkpoint is not None:
        verify_checkpoint(resolve_checkpoint(args.checkpoint))  # missing or damaged: refused before any load
    if args.editor is None:
        args.editor = checkpoint_editor(args.checkpoint) if args.checkpoint is not None else DEFAULT_EDITOR
    cls = editor_class(args.editor)
    if args.checkpoint is None and cls.requires_checkpoint:
        raise ValueError(f"--editor {cls.name} needs --checkpoint DIR: a trained {cls.display_name} "
                         f"(train one with 'sss train {cls.name}')")
    return cls


def build_editor(cls, args, model, tokenizer, regularizer, options: dict):
    """The editor to evaluate: ``cls`` built fresh, or loaded from ``--checkpoint``.

    A trainable editor (one with ``fit``) applies SSS while it is trained, not while it edits:
    whether its run counts as "w/ SSS" comes from the checkpoint, and a ``--sss-c`` that
    disagrees is reported and ignored; untrained, it is built without a regularizer.
    """
    trainable = cls.is_trainable()
    if args.checkpoint is not None:
        editor = cls.from_checkpoint(args.checkpoint, model, tokenizer, progress=args.progress, **options)
        trained = editor.regularizer.describe() if editor.regularizer is not None else None
        wanted = regularizer.describe() if regularizer is not None else None
        if trained != wanted:
            logger.warning("%s applies SSS during training only: the checkpoint was trained with %s; ignoring the "
                           "command line's %s", cls.display_name, trained or "no regularizer",
                           wanted or "no regularizer")
        return editor
    if trainable:
        logger.warning("--editor %s without --checkpoint: evaluating an UNTRAINED %s (train one with 'sss train %s')",
                       cls.name, cls.display_name, cls.name)
        regularizer = None
    return cls(model, tokenizer, regularizer=regularizer, progress=args.progress, **options)
