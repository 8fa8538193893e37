#!/usr/bin/env python
"""Execute the example notebooks and write their outputs back in place, so readers see a real run.

    .venv/bin/python scripts/run_notebooks.py                   # every examples/*.ipynb, full setting
    .venv/bin/python scripts/run_notebooks.py examples/02_mend.ipynb --quick

Each notebook runs in a fresh kernel of this interpreter (so it sees the installed ``sss``) from
its own folder. Its outputs replace the old ones only when every cell succeeded, and atomically
(a temporary file beside it, then a rename): a failed or interrupted run leaves the committed
notebook as it was. Reports and checkpoints the notebooks write go to a temporary folder unless
``--results`` names one. ``--quick`` sets ``SSS_QUICK=1`` (what the test suite runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "sss-notebooks-python"


def write_kernel_spec(folder: Path) -> None:
    """A kernel spec that runs this very interpreter; JUPYTER_PATH must point at ``folder``."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sss notebooks", "language": "python"}))


def execute(path: Path, timeout: int) -> float:
    """Run ``path`` and replace it with the executed notebook; returns the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    # record_timing=False: no per-cell timestamps, so rerunning changes only what the cells show.
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell; the file is then left untouched
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".ipynb")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            nbformat.write(notebook, file)
        os.chmod(temporary, path.stat().st_mode & 0o777)  # mkstemp makes it private; keep the notebook's mode
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return time.monotonic() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every examples/*.ipynb")
    parser.add_argument("--quick", action="store_true", help="set SSS_QUICK=1 (the test suite's short setting)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default 3600)")
    parser.add_argument("--results", type=Path, help="where the notebooks write reports (default: a temporary folder)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "examples").glob("*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")

    with tempfile.TemporaryDirectory(prefix="sss-notebooks-") as scratch:
        write_kernel_spec(Path(scratch) / "jupyter")
        os.environ["JUPYTER_PATH"] = str(Path(scratch) / "jupyter")
        os.environ["SSS_RESULTS"] = str(args.results or Path(scratch) / "results")
        os.environ["MPLBACKEND"] = "Agg"
        if args.quick:
            os.environ["SSS_QUICK"] = "1"
        else:
            os.environ.pop("SSS_QUICK", None)
        for path in notebooks:
            print(f"running {path} ({'quick' if args.quick else 'full'})", flush=True)
            seconds = execute(path.resolve(), args.timeout)
            print(f"wrote {path} in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
