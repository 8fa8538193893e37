"""``sss study FILE... [--scale smoke|cpu|gpu]``: run the paper's experiments as resumable grids.

Each file (``studies/*.toml``) declares a grid of cells; finished cells are skipped, interrupted
ones resume (docs/study.md). After the run the command writes each study's summary (tables with
paired confidence intervals, figures) and prints where everything went and what is left.
"""
from __future__ import annotations

import glob
from pathlib import Path

from .checks import check_device, nonempty, nonempty_path, output_folder
from .options import add_output_options

DEFAULT_OUT = "sss-results/study"


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "study", help="run experiment grids (studies/*.toml) cell by cell, resumably, and summarise them",
        description="Run every unfinished cell of each study file at the chosen scale, then write "
                    "<out>/<study>/summary.md with paired with/without-SSS comparisons and figures. "
                    "Rerunning skips finished cells and resumes an interrupted one where it stopped.")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="study files (TOML), or 'all' for every studies/*.toml")
    parser.add_argument("--scale", choices=("smoke", "cpu", "gpu"), default="smoke",
                        help="smoke: tiny model, a few requests (seconds); cpu: smollm2-135m, sized for ~8 h on 2 "
                             "cores in all; gpu: the paper's sizes on CUDA (default: %(default)s)")
    parser.add_argument("--out", type=nonempty_path, default=Path(DEFAULT_OUT), help="output folder (default: %(default)s)")
    parser.add_argument("--model", type=nonempty, default=None, help="override the scale's model (hub id or folder; e.g. gpt2-xl)")
    parser.add_argument("--device", default=None, help="override the scale's device (cpu, cuda, cuda:N)")
    parser.add_argument("--only", default=None, metavar="LABEL",
                        help="run only cells whose label contains LABEL (a glob when it has * ? [)")
    parser.add_argument("--data-root", type=nonempty, default=None,
                        help="folder that relative data paths start from (default: $SSS_STUDY_DATA, else "
                             "../shared/data beside the repository)")
    parser.add_argument("--status", action="store_true",
                        help="run nothing: print what is done and what is left, and rewrite the summaries")
    parser.add_argument("--adopt", action="store_true",
                        help="adopt finished cells written before cells had an identity (older sss), where every "
                             "record matches the data read now: they get the identity they would have and their "
                             "current folder name, instead of being rerun")
    parser.add_argument("--partial", action="store_true",
                        help="summaries also read unfinished cells (pairs use the requests both sides have)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    add_output_options(parser)
    parser.set_defaults(func=run)


add_study_command = add_command


def study_files(names) -> list:
    files = []
    for name in names:
        if name == "all":
            found = sorted(glob.glob(str(Path(__file__).resolve().parents[2] / "studies" / "*.toml")))
            files += found or sorted(glob.glob("studies/*.toml"))
        else:
            files.append(name)
    return files


def run(args) -> int:
    from ..study import load_study, run_study, stale_folders, study_status, summarise_study

    if args.device is not None:
        check_device(args.device)
    studies = [load_study(f, args.scale, data_root=args.data_root, model=args.model, device=args.device)
               for f in study_files(args.files)]  # every file is checked before anything runs
    with output_folder(args.out):  # a file, /dev/null, a read-only folder: refused before any cell runs
        pass
    for study in studies:
        if args.adopt:
            from ..study.adopt import adopt_legacy_cells

            for label, outcome in adopt_legacy_cells(study, args.out):
                print(f"  {label}: {outcome}")
        if not args.status:
            run_study(study, args.out, only=args.only, progress=args.progress)
        statuses = study_status(study, args.out, args.only)
        summary = summarise_study(study, args.out, resamples=args.resamples, partial=args.partial)
        left = [s for s in statuses if not s.done]
        print(f"{study.name} ({args.scale}): {len(statuses) - len(left)} of {len(statuses)} cells done; "
              f"results in {Path(args.out) / study.name}, summary {summary}")
        for status in left:
            print(f"  left: {status.cell.label} ({status.records} requests recorded) in {status.folder}")
        for cell, folder, reasons in stale_folders(study, args.out, [s.cell for s in statuses]):
            print(f"  stale: {folder} ({', '.join(reasons)}); never read")
    return 0
