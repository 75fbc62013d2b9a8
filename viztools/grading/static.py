"""Off-limits library calls, found by reading the student's code (``ast``) in the grader, never by running it.

A task in the solution may list library functions that do what the student must write (``"forbidden":
["viztools.occlusion.occlusion"]``). Every name the student's cells use is resolved through their imports
(``import viztools``, ``from viztools import occlusion as occ``, ``from viztools.occlusion import occlusion``) to
the object it names in the grader's own copy of viztools, so re-exports (``viztools.occlusion_coarse_to_fine``)
are caught too. Only names under ``viztools`` are ever imported for this. Code that hides the name (``getattr``
with a computed string) is not caught: this check is a guard rail with a clear message, the hidden checks are the
grade.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass

PACKAGE = "viztools"


def resolve(dotted: str) -> object | None:
    """The object a dotted ``viztools...`` name refers to in the grader (None when it names nothing)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    try:
        value = importlib.import_module(PACKAGE)
        for index, part in enumerate(parts[1:], start=1):
            try:
                value = getattr(value, part)
            except AttributeError:
                value = importlib.import_module(".".join(parts[: index + 1]))
    except (ImportError, AttributeError, ValueError):
        return None
    return value


def to_python(source: str) -> str:
    """A cell's source with IPython syntax (magics, ``!commands``) turned into plain Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


@dataclass(frozen=True)
class Use:
    """One use of an off-limits name: 1-based code cell, line, the code's spelling and the forbidden name."""

    cell: int
    line: int
    spelled: str
    forbidden: str


def _dotted(node: ast.AST) -> list[str] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(names)]
    return None


def _aliases(trees: dict[int, ast.AST]) -> dict[str, str]:
    """Local name -> dotted viztools name, from every import in every cell (flow-insensitive on purpose)."""
    aliases: dict[str, str] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        if alias.asname:
                            aliases[alias.asname] = alias.name
                        else:
                            aliases[alias.name.split(".")[0]] = PACKAGE
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def forbidden_uses(sources: dict[int, str], forbidden: list[str]) -> list[Use]:
    """Uses of the ``forbidden`` dotted names in ``sources`` (1-based code cell number -> source)."""
    targets = [(name, resolve(name)) for name in forbidden]
    targets = [(name, value) for name, value in targets if value is not None]
    trees: dict[int, ast.AST] = {}
    for number, source in sources.items():
        try:
            trees[number] = ast.parse(to_python(source))
        except (SyntaxError, ValueError):
            continue  # a cell that does not parse cannot call anything; the kernel reports its error
    aliases = _aliases(trees)
    uses: list[Use] = []
    for number, tree in trees.items():
        for node in ast.walk(tree):
            spellings = []
            if isinstance(node, ast.ImportFrom) and node.module:
                spellings = [[*node.module.split("."), alias.name] for alias in node.names]
            elif isinstance(node, (ast.Attribute, ast.Name)):
                chain = _dotted(node)
                if chain and chain[0] in aliases:
                    spellings = [[*aliases[chain[0]].split("."), *chain[1:]]]
            for spelling in spellings:
                value = resolve(".".join(spelling)) if spelling[0] == PACKAGE else None
                for name, target in targets:
                    if value is not None and value is target:
                        code = ast.get_source_segment(to_python(sources[number]), node) or ".".join(spelling)
                        uses.append(Use(number, getattr(node, "lineno", 0), code.splitlines()[0][:60], name))
    unique = {(use.cell, use.line, use.forbidden): use for use in uses}
    return sorted(unique.values(), key=lambda use: (use.cell, use.line))
