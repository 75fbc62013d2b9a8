"""Reading notebooks defensively and recognising the cells the grading machinery cares about.

Metadata conventions (set in ``solutions/NN_*.ipynb``, carried into the exercises students receive):

- notebook: ``metadata.viztools = {"exercise": "03_occlusion", "version": 1, "title": "..."}``;
- check cell: tag ``"check"`` and ``metadata.viztools = {"check": "check-naive-corner", "points": 2}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
from nbformat import NotebookNode

METADATA_KEY = "viztools"
CHECK_TAG = "check"
#: Visible check cells print only verdict lines, ``"<what>: OK"`` or ``"<what>: WRONG - <why>"`` (see
#: ``checks.report``), for the students' self-testing. The builder refuses a solution whose visible checks print
#: anything else or fail. The grader never reads these lines: it grades with the hidden checks.
PASS_WORD = "OK"
FAIL_WORD = "WRONG"
VERDICT_LINE = re.compile(rf"^.*: (?:{PASS_WORD}|{FAIL_WORD}\b.*)$")


def verdict_lines(text: str) -> list[str]:
    """The verdict lines of a check's printed output."""
    return [line for line in text.splitlines() if VERDICT_LINE.match(line)]


class NotebookError(ValueError):
    """A file that cannot be used as a notebook; the message says why and what to do."""


def read_notebook(path: str | Path) -> NotebookNode:
    """Read an nbformat 4 notebook, or raise :class:`NotebookError` with a message a student can act on."""
    path = Path(path)
    if not path.exists():
        raise NotebookError(f"{path}: no such file. Check the path.")
    if path.is_dir():
        raise NotebookError(f"{path} is a folder; pass the .ipynb file itself.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise NotebookError(
            f"{path} is not a Jupyter notebook (it is not a text file). Hand in the .ipynb file saved by Jupyter."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise NotebookError(
            f"{path} is not a Jupyter notebook: it is not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno}). The file may be cut short or edited by hand; save it again from Jupyter "
            "(File > Save Notebook) or download a fresh copy."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells", data.get("worksheets")), list):
        raise NotebookError(f"{path} is JSON but not a Jupyter notebook (it has no list of cells).")
    version = data.get("nbformat")
    if version != 4:
        raise NotebookError(
            f"{path} is a notebook in format version {version}; the grader reads format 4 (Jupyter 4 and later). "
            "Open it in JupyterLab and save it again, or run `jupyter nbconvert --to notebook` on it."
        )
    try:
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
    except nbformat.ValidationError as error:
        raise NotebookError(
            f"{path} is not a valid notebook: {error.message}. Save it again from JupyterLab."
        ) from None
    except Exception as error:  # nbformat's readers raise assorted errors on odd structures
        raise NotebookError(f"{path} is not a valid notebook: {error}. Save it again from JupyterLab.") from None
    return notebook


def viztools_metadata(node: NotebookNode | dict) -> dict:
    """The ``metadata.viztools`` dict of a notebook or cell (empty when absent or not a dict)."""
    metadata = node.get("metadata", {})
    value = metadata.get(METADATA_KEY, {}) if isinstance(metadata, dict) else {}
    return value if isinstance(value, dict) else {}


def cell_tags(cell: NotebookNode | dict) -> list[str]:
    """A cell's tags (empty when absent or malformed)."""
    metadata = cell.get("metadata", {})
    tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def check_id(cell: NotebookNode | dict) -> str | None:
    """The check id a cell declares in ``metadata.viztools.check``, or None."""
    value = viztools_metadata(cell).get("check")
    return value if isinstance(value, str) and value else None


def first_line(source: str, width: int = 60) -> str:
    """The first non-blank line of a cell, shortened to ``width`` characters, for messages."""
    for line in source.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= width else line[: width - 3] + "..."
    return "(empty cell)"
