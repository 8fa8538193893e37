"""Execute every notebook under examples/ in its quick setting; a cell that raises fails the test.

The kernel is this interpreter (``sys.executable``), through a kernel spec written for the test,
so the notebooks see the same installed sss whatever ``python`` is first on PATH.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs nbformat (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs nbclient (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel (pip install -e '.[test]')")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL = "sss-test-python"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec that runs this very interpreter, found through JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sss tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SSS_QUICK", "1")  # every notebook reads it to shrink its work
    monkeypatch.setenv("SSS_RESULTS", str(tmp_path / "results"))  # keep outputs out of the checkout
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return KERNEL


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks under {EXAMPLES}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=kernel, timeout=900,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
