"""The ``sss`` command line: ``sss eval``, ``sss demo`` and the sub-commands other modules add.

Extending it takes one line each:

* a sub-command: add ``"name": "package.module:add_name_command"`` to :data:`COMMANDS`; the
  function receives argparse's sub-parsers object, adds its parser and sets ``func`` (a callable
  taking the parsed ``args`` and returning an exit code). The module is imported only when the
  parser is built, so a heavy command costs nothing to the others.
* an editor that needs more than ``cls(model, tokenizer, regularizer=...)`` (a trained
  checkpoint, say): add ``"name": "package.module:build_function"`` to :data:`EDITOR_BUILDERS`;
  the function receives ``(args, model, tokenizer, regularizer)`` and returns the editor
  (``args.checkpoint`` holds ``--checkpoint``).

Under ``torchrun --nproc_per_node=N -m sss eval ...`` every rank evaluates its share of the
requests (``single`` and ``batch`` modes) and rank 0 writes the merged report and prints.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

logger = logging.getLogger("sss.cli")

# name -> function(subparsers) that adds the sub-command (or "module:function", imported lazily).
COMMANDS: Dict[str, Union[str, Callable]] = {
    "eval": "sss.cli:add_eval_command",
    "demo": "sss.cli:add_demo_command",
    "train": "sss.train.cli:add_train_command",
}

# editor name -> function(args, model, tokenizer, regularizer) -> Editor (or "module:function").
EDITOR_BUILDERS: Dict[str, Union[str, Callable]] = {
    "mend": "sss.editors.mend.cli:build_for_eval",
    "serac": "sss.editors.serac.cli:build_for_eval",
}

# How many demo requests `sss demo` edits by default: FT-L with and without SSS on smollm2-135m
# must finish in under 10 minutes on 2 CPU cores (measured: see docs/evaluation.md).
DEMO_LIMIT = 20
DEMO_MODEL = "smollm2-135m"
DEFAULT_C = 0.9


def _resolve(target: Union[str, Callable]) -> Callable:
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


# -- shared options ------------------------------------------------------------------------------

def _add_common_options(parser: argparse.ArgumentParser, *, limit: Optional[int], out: str) -> None:
    parser.add_argument("--model", default=DEMO_MODEL,
                        help="built-in name (smollm2-135m, tiny-gpt2, tiny-llama), Hugging Face hub id or local "
                             "folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=limit,
                        help="evaluate at most N requests (a seeded subset where the reader supports it)" +
                             (" (default: %(default)s)" if limit else "; omitted: all"))
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the subset of requests and for each edit (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="folder for the JSON reports, table and figures (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    parser.add_argument("--eval-batch-size", type=int, default=32,
                        help="most probe rows per forward pass when measuring (default: %(default)s)")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="skip exact_match (greedy generation), the slowest metric")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def _add_sss_options(parser: argparse.ArgumentParser, *, default_c: Optional[List[float]]) -> None:
    group = parser.add_argument_group("SSS regularizer")
    group.add_argument("--sss-c", type=float, nargs="+", default=default_c, metavar="C",
                       help="run with the SSS regularizer at coefficient C (Eq. 10: (1-C)*L_ori + C*SSS); several "
                            "values run a sweep and draw c_sweep.png" +
                            (" (default: %(default)s)" if default_c else "; omitted: without SSS"))
    group.add_argument("--sss-target", choices=("last_hidden", "input_embeds"), default="last_hidden",
                       help="embeddings the SSS gradient is taken against (default: %(default)s, as the authors' "
                            "code)")
    group.add_argument("--sss-tokens", choices=("prompt", "all"), default="prompt",
                       help="tokens whose gradients count: the prompt's, or prompt and target (default: %(default)s)")
    group.add_argument("--sss-reduction", choices=("mean", "sum"), default="mean",
                       help="'mean' over tokens (the paper's 1/m) or 'sum' (the released code) (default: %(default)s)")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("transformers", "urllib3", "filelock", "datasets", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# -- sss eval ------------------------------------------------------------------------------------

def add_eval_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="edit with one editor and measure reliability, generality, locality, portability",
        description="Edit a model request by request (or in batches, or sequentially), measure every probe "
                    "before and after, and write a JSON report per run, a Markdown table laid out like the "
                    "paper's Table 1 and figures. Without --sss-c the editor runs without SSS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  sss eval --editor ft-l --model smollm2-135m "
               "--data ../shared/data/counterfact/counterfact-val.json:counterfact --limit 20 --sss-c 0.9 --baseline "
               "--out runs/cf20\n\nunder torchrun (single/batch modes):\n  torchrun --nproc_per_node=2 -m sss eval "
               "--model tiny-gpt2 --data demo --limit 6 --out runs/tiny")
    parser.add_argument("--editor", default="ft-l",
                        help="registered editor name: ft-l, mend, serac, ... (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained editor checkpoint folder (for editors that need one, e.g. mend, serac)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field of the editor's config, VALUE parsed as JSON when it can be "
                             "(e.g. --option steps=10 --option layers=[5]); repeatable")
    parser.add_argument("--data", default="demo",
                        help="PATH[:format] of a dataset (formats: zsre, counterfact, counterfact-rome, knowedit; "
                             "detected from the keys when omitted), anything datasets.load_dataset accepts, or "
                             "'demo' for the built-in demo set (default: %(default)s)")
    parser.add_argument("--split", default=None, help="dataset split, for sources with several")
    parser.add_argument("--mode", choices=("single", "batch", "sequential"), default="single",
                        help="single: edit, measure, restore per request (the paper's default); batch: "
                             "--batch-size requests per edit; sequential: edits accumulate, all measured after the "
                             "last (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="requests per edit (batch mode: required; sequential: default 1)")
    parser.add_argument("--measure-each", action="store_true",
                        help="sequential: also measure each request right after its own edit")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=(), metavar="N",
                        help="sequential: also summarise the first N edits after the N-th edit (e.g. 1 10 100), "
                             "drawn as sequential.png")
    parser.add_argument("--baseline", action="store_true", help="with --sss-c: also run the editor without SSS")
    _add_common_options(parser, limit=None, out="sss-results/eval")
    _add_sss_options(parser, default_c=None)
    parser.set_defaults(func=run_eval)


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help=f"FT-L with and without SSS on {DEMO_MODEL} and the built-in demo set (the main job)",
        description=f"Edit {DEMO_MODEL} with FT-L, without and with the SSS regularizer, one built-in demo "
                    f"request at a time (single mode); print the Table-1-style comparison and write the JSON "
                    f"reports, table.md and comparison.png. Takes under 10 minutes on 2 CPU cores with the "
                    f"default --limit {DEMO_LIMIT}.")
    _add_common_options(parser, limit=DEMO_LIMIT, out="sss-results/demo")
    _add_sss_options(parser, default_c=[DEFAULT_C])
    parser.set_defaults(func=run_demo)


def run_demo(args) -> int:
    args.editor, args.checkpoint, args.option, args.data, args.split = "ft-l", None, [], "demo", None
    args.mode, args.batch_size, args.measure_each, args.checkpoints, args.baseline = "single", None, False, (), True
    return run_eval(args)


def run_eval(args) -> int:
    from . import distributed

    distributed.init_from_env()
    try:
        return _run_eval(args, distributed)
    finally:
        distributed.cleanup()


def _run_eval(args, distributed) -> int:
    from .eval import evaluate
    from .eval import report
    from .models import load_model

    main = distributed.is_main()
    args.progress = args.progress and main  # one set of progress bars, not one per rank
    out = Path(args.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Cheap checks first, so a typo fails before the model loads.
    options = parse_options(args.option)
    if args.editor not in EDITOR_BUILDERS:
        from .editors import editor_class

        editor_class(args.editor)
    requests = load_data(args.data, limit=args.limit, seed=args.seed, split=args.split)
    model, tokenizer = load_model(args.model, device=_device(args.device, distributed))
    cache: dict = {}
    runs = {}
    for C in _run_plan(args):
        regularizer = _regularizer(args, C)
        editor = build_editor(args, model, tokenizer, regularizer, options)
        results = evaluate(editor, requests, args.mode, batch_size=args.batch_size,
                           eval_batch_size=args.eval_batch_size, generate=args.generate,
                           measure_each=args.measure_each, checkpoints=list(args.checkpoints), seed=args.seed,
                           progress=args.progress, unedited_cache=cache)
        runs[C] = results
        if main:
            path = report.write_json(results, out / f"results_{_slug(results)}.json", model=args.model, data=args.data)
            logger.info("%s: wrote %s", results.label, path)
    if not main:
        return 0
    columns = {r.label: r for r in runs.values()}
    table = report.markdown_table(columns, include_unedited=True)
    details = report.category_rows(columns)
    if details:
        table += "\nBy probe category:\n\n" + report.markdown_table(columns, include_unedited=True, rows=details)
    title = f"{args.model} · {args.data} · {len(requests)} requests · mode {args.mode}\n\n"
    (out / "table.md").write_text(title + table)
    figures = [report.plot_comparison(columns, out / "comparison.png")]
    if args.mode == "sequential" and args.checkpoints:
        figures.append(report.plot_sequential(columns, out / "sequential.png"))
    swept = {C: r for C, r in runs.items() if C is not None}
    if len(swept) > 1:
        figures.append(report.plot_c_sweep(swept, out / "c_sweep.png"))
    print(title + table)
    print(f"wrote {out}/table.md, {len(runs)} JSON report(s) and {', '.join(f.name for f in figures)} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def _run_plan(args) -> List[Optional[float]]:
    """The SSS coefficients to run, None meaning without SSS."""
    if not args.sss_c:
        return [None]
    return ([None] if args.baseline else []) + list(dict.fromkeys(args.sss_c))


def _regularizer(args, C: Optional[float]):
    if C is None:
        return None
    from .losses import SSSRegularizer

    return SSSRegularizer(C=C, target=args.sss_target, tokens=args.sss_tokens, reduction=args.sss_reduction)


def _slug(results) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", results.label.lower().replace("w/ ", "")).strip("_")


def _device(name: str, distributed):
    import torch

    if name == "auto":
        return distributed.device()
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device: {error}") from error


def load_data(source: str, *, limit: Optional[int] = None, seed: int = 0, split: Optional[str] = None):
    """``"demo"`` for the built-in demo set, else ``PATH[:format]`` read by :func:`sss.data.load_requests`."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if source == "demo":
        from .data import demo_requests

        return demo_requests(limit=limit)
    from .data import load_requests, parse_source

    path, data_format = parse_source(source)
    return load_requests(path, data_format, limit=limit, seed=seed, split=split)


def parse_options(pairs: Sequence[str]) -> dict:
    """``["steps=10", "layers=[5]"]`` -> ``{"steps": 10, "layers": [5]}`` (JSON values, else strings)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def build_editor(args, model, tokenizer, regularizer, options: Optional[dict] = None):
    """The editor ``args.editor`` names: a registered builder, else ``cls(model, tokenizer, ...)``."""
    from .editors import editor_class

    if args.editor in EDITOR_BUILDERS:
        return _resolve(EDITOR_BUILDERS[args.editor])(args, model, tokenizer, regularizer)
    cls = editor_class(args.editor)
    if getattr(args, "checkpoint", None) is not None:
        raise ValueError(f"editor {args.editor!r} takes no --checkpoint")
    return cls(model, tokenizer, regularizer=regularizer, progress=args.progress, **(options or {}))


# -- entry point ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sss", description="Knowledge editing (FT-L, MEND, SERAC) with the SSS regularizer. Start with "
                                "'sss demo'; each sub-command has its own --help.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, add in COMMANDS.items():
        _resolve(add)(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # bad input: one clear line instead of a traceback (-v keeps it)
        if getattr(args, "verbose", False):
            raise
        parser.exit(2, f"sss {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
