"""``sss demo``: FT-L with and without SSS on smollm2-135m and the built-in demo set (the main job)."""
from __future__ import annotations

from . import eval as eval_command
from .checks import positive_int, seed
from .options import DEFAULT_MODEL, add_device_option, add_model_option, add_output_options, add_sss_options

# How many demo requests `sss demo` edits by default: FT-L with and without SSS on smollm2-135m
# must finish in under 10 minutes on 2 CPU cores (measured: see docs/evaluation.md).
DEMO_LIMIT = 20
DEFAULT_C = 0.9


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help=f"FT-L with and without SSS on {DEFAULT_MODEL} and the built-in demo set (the main job)",
        description=f"Edit {DEFAULT_MODEL} with FT-L, without and with the SSS regularizer, one built-in demo "
                    f"request at a time (single mode); print the Table-1-style comparison and write the JSON "
                    f"reports, table.md and comparison.png. Takes under 10 minutes on 2 CPU cores with the "
                    f"default --limit {DEMO_LIMIT}.")
    add_model_option(parser)
    parser.add_argument("--limit", type=positive_int, default=DEMO_LIMIT,
                        help="edit at most N demo requests (default: %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, help="seed for each edit (default: %(default)s)")
    eval_command.add_measurement_options(parser, out="sss-results/demo")
    add_device_option(parser)
    add_output_options(parser)
    add_sss_options(parser, sweep=True, default_c=[DEFAULT_C])
    parser.set_defaults(func=run)


def run(args) -> int:
    args.editor, args.checkpoint, args.option, args.data, args.split = "ft-l", None, [], "demo", None
    args.mode, args.batch_size, args.measure_each, args.checkpoints, args.baseline = "single", None, False, (), True
    args.edits_at_once = 1  # one at a time, as the SSS run beside it (edit_each does not apply with SSS)
    args.study_hint = (f"At {args.limit} requests a difference must be large to be resolved; the same comparison at "
                       "the study's scale (100 ZsRE and 100 CounterFact requests): "
                       "sss study studies/table1.toml --scale cpu --only 'ft-l-*'  (results: docs/results.md)")
    return eval_command.run(args)
