"""Run a lecture notebook top to bottom in a fresh kernel (nbclient), as a student's JupyterLab would."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LECTURES = sorted((Path(__file__).resolve().parents[1] / "lectures").glob("[0-9][0-9]_*.ipynb"))
LECTURE_IDS = [path.stem for path in LECTURES]


def run_lecture(
    lecture: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, first_cell: str | None = None
) -> str:
    """Execute ``lecture`` with ``$VIZTOOLS_WEIGHTS_DIR=weights_dir`` and one torch thread; its printed text.

    ``first_cell`` is injected before the lecture's first cell. Raises CellExecutionError (naming the cell and its
    traceback) when a cell fails.
    """
    monkeypatch.setenv("VIZTOOLS_WEIGHTS_DIR", str(weights_dir))  # the kernel inherits this process's environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(lecture, as_version=4)
    if first_cell is not None:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(lecture.parent)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    return "".join(output.get("text", "") for output in outputs)
