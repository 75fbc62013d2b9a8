"""The installed course: the lecture and exercise notebooks that ship with viztools, written into a student's folder.

``viztools course [DIR]`` (and ``viztools lab`` on a folder without a course) calls :func:`write_course`. It never
loses a student's work: a manifest (``.viztools-course.json``) remembers what was written (a fingerprint of every
notebook's cells and the package version), so a re-run after upgrading viztools refreshes the notebooks the
student left as they were, keeps the ones they edited (the new version goes beside it as a versioned copy such as
``03_occlusion.v0.2.0.ipynb``), and never replaces an exercise they worked on. Solutions are not shipped.

Only the standard library is imported here, so the command starts quickly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from viztools import __version__

#: Where ``viztools course`` and ``viztools lab`` put the course when no folder is given.
DEFAULT_FOLDER = "viztools-course"
#: The manifest of what was written, inside the course folder.
MANIFEST = ".viztools-course.json"
#: The course's parts, in the course folder as in the repository.
LECTURES, EXERCISES = "lectures", "exercises"
#: The lecture every course starts with.
FIRST_LECTURE = "00_getting_started.ipynb"
#: The course notebooks inside an installed wheel (the build copies lectures/ and exercises/ there; see setup.py).
PACKAGE_COURSE = Path(__file__).resolve().parent / "_course"
#: The folder above the viztools package: the clone's root for an editable install (else site-packages).
SOURCE_ROOT = Path(__file__).resolve().parents[1]
#: A course notebook's name: two digits, an underscore, a name (versioned copies such as ``03_x.v0.2.0`` are not).
NOTEBOOK_NAME = re.compile(r"^(\d\d)_([A-Za-z0-9_-]+)\.ipynb$")


class CourseError(ValueError):
    """The course cannot be written or found there; the message says what to do."""


# --------------------------------------------------------------------------------------------------------------
# Where the notebooks come from
# --------------------------------------------------------------------------------------------------------------


def course_source(source_root: Path | None = None, package_course: Path | None = None) -> Path:
    """The folder holding ``lectures/`` and ``exercises/``: the clone itself for an editable (development) install,
    else the copy inside the installed package."""
    root = SOURCE_ROOT if source_root is None else source_root
    packaged = PACKAGE_COURSE if package_course is None else package_course
    if (root / "pyproject.toml").is_file() and (root / LECTURES / FIRST_LECTURE).is_file():
        return root
    if (packaged / LECTURES / FIRST_LECTURE).is_file():
        return packaged
    raise CourseError(f"This installation of viztools has no course notebooks (looked in {packaged} and {root}). "
                      "Reinstall it from a wheel or a clone: pip install --force-reinstall viztools")


def course_notebooks(folder: Path) -> list[Path]:
    """The course notebooks (``NN_name.ipynb``) directly in ``folder``, sorted; versioned copies are left out."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and NOTEBOOK_NAME.match(p.name))


@dataclass(frozen=True)
class CourseFile:
    """One file of the course: its path inside the course folder, its bytes, and its part."""

    relative: str
    content: bytes
    part: str  # "lectures", "exercises" or "readme"


def course_files(source: Path | None = None, version: str = __version__) -> list[CourseFile]:
    """Every file ``viztools course`` writes: the lectures, the exercises and the course's README.md."""
    source = course_source() if source is None else source
    files = [CourseFile(f"{part}/{path.name}", path.read_bytes(), part)
             for part in (LECTURES, EXERCISES) for path in course_notebooks(source / part)]
    files.append(CourseFile("README.md", course_readme(version).encode("utf-8"), "readme"))
    return files


def course_readme(version: str = __version__) -> str:
    """The README.md at the top of a student's course folder."""
    return f"""# The viztools course (viztools {version})

Seeing inside CNNs: visualization, DeepDream, neural style, adversarial examples.

| folder | what |
|---|---|
| `lectures/` | the lecture notebooks, in order: start with `lectures/{FIRST_LECTURE}` |
| `exercises/` | the graded exercises: fill in the cells marked `# YOUR CODE HERE` and hand in the notebook |

Open the course with `viztools lab` in this folder (or `viztools lab PATH/TO/THIS/FOLDER`): JupyterLab starts
here and opens lecture 00. It prints the URL to open, with its access token.

Check an exercise before you hand it in: `viztools grade exercises/03_occlusion.ipynb` runs the checks your
instructor grades with and says what is wrong.

Your edits are safe. After upgrading viztools, `viztools course` in this folder brings the notebooks up to date:
notebooks you did not change are refreshed; a lecture you edited is kept as it is and the new version is written
beside it (for example `03_occlusion.v0.2.0.ipynb`); an exercise you worked on is never replaced. The file
`{MANIFEST}` remembers what was written; leave it here.

Instructors: `viztools present 03` shows lecture 03 as an app in the browser (no code, live widgets).
"""


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and the manifest
# --------------------------------------------------------------------------------------------------------------


def fingerprint(content: bytes, name: str) -> str:
    """What counts as the student's work in a file: for a notebook the type and source of every cell (running a
    notebook, or opening and saving it in JupyterLab, changes outputs and metadata but not this), else the bytes."""
    if name.endswith(".ipynb"):
        try:
            cells = json.loads(content.decode("utf-8"))["cells"]
            parts = [[cell["cell_type"], "".join(cell["source"]) if isinstance(cell["source"], list)
                      else cell["source"]] for cell in cells]
            return "cells:" + hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass  # not a notebook we can read: compare the bytes
    return "bytes:" + hashlib.sha256(content).hexdigest()


def is_course(folder: Path) -> bool:
    """Whether ``folder`` holds a course written by ``viztools course`` (it has the manifest)."""
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    """The manifest of the course in ``folder`` (empty when there is none or it cannot be read)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"files": {}}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return {"files": {}}
    return manifest


def course_version(folder: Path) -> str | None:
    """The viztools version that last wrote the course in ``folder`` (None where there is no course)."""
    return read_manifest(folder).get("version") if is_course(folder) else None


# --------------------------------------------------------------------------------------------------------------
# Writing the course
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What happened to one file: ``written`` (new), ``updated`` (refreshed, the student had not changed it),
    ``current`` (already up to date), ``yours`` (edited by the student; the course has no newer version of it),
    ``replaced`` (edited, overwritten because of --force) or ``kept`` (edited by the student and left alone while
    the course has a newer version: ``copy`` is where that went)."""

    relative: str
    what: str
    copy: str | None = None


@dataclass
class CourseReport:
    """The outcome of :func:`write_course`."""

    folder: Path
    version: str
    previous_version: str | None
    actions: list[Action] = field(default_factory=list)

    def count(self, what: str) -> int:
        return sum(action.what == what for action in self.actions)

    def summary(self) -> str:
        """A short text for the terminal: counts, then one line per file that needs the student's attention."""
        was = self.previous_version
        lines = [f"Course of viztools {self.version} in {self.folder}"
                 + (f" (was {was})" if was and was != self.version else "") + ":"]
        labels = [("written", "new"), ("updated", "refreshed (you had not changed them)"),
                  ("current", "already up to date"), ("yours", "edited by you (no newer version)"),
                  ("replaced", "replaced although you edited them (--force)"),
                  ("kept", "kept because you edited them (newer version beside them)")]
        counts = [f"{self.count(what)} {label}" for what, label in labels if self.count(what)]
        lines.append("  " + ", ".join(counts) + ".")
        for action in self.actions:
            if action.what == "kept":
                lines.append(f"  kept {action.relative} (your edits); the new version is {action.copy}")
            elif action.what == "replaced":
                lines.append(f"  replaced {action.relative} (your edits are gone: --force)")
        if self.count("kept"):
            lines.append("  Compare your copy with the new version; `viztools course --force` replaces edited "
                         "lectures (never exercises).")
        return "\n".join(lines)


def _check_folder(folder: Path) -> None:
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "the course folder" if parent == folder else f"the folder {folder}"
                raise CourseError(f"{parent} is a file, not a folder, so {what} cannot be made there. "
                                  "Choose another folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CourseError(f"Cannot write in {parent} (no permission). Choose a folder of your own.")
            return


def _write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file beside it (permissions as for any new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as output:
            output.write(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def versioned_name(relative: str, version: str, attempt: int = 1) -> str:
    """Where the new version of an edited file goes: ``lectures/03_occlusion.v0.2.0.ipynb`` (``-2``, ``-3``, ... when
    that name is taken by a file the student changed)."""
    path = Path(relative)
    suffix = f".v{version}" + (f"-{attempt}" if attempt > 1 else "")
    return str(path.with_name(f"{path.stem}{suffix}{path.suffix}").as_posix())


def write_course(folder: str | Path = DEFAULT_FOLDER, *, force: bool = False,
                 files: Sequence[CourseFile] | None = None, version: str = __version__) -> CourseReport:
    """Write the course into ``folder`` (made if needed), or bring it up to date there without losing the
    student's work: see the module's docstring. ``force`` replaces edited lectures (never exercises)."""
    folder = Path(folder).expanduser().absolute()
    _check_folder(folder)
    files = course_files(version=version) if files is None else files
    manifest = read_manifest(folder)
    records: dict = manifest["files"]
    report = CourseReport(folder, version, manifest.get("version"))

    def write(relative: str, content: bytes) -> None:
        _write_atomically(folder / relative, content)
        records[relative] = {"sha256": hashlib.sha256(content).hexdigest(),
                             "fingerprint": fingerprint(content, relative), "version": version}

    def unchanged_since_written(relative: str, current: bytes) -> bool:
        record = records.get(relative)
        return isinstance(record, dict) and record.get("fingerprint") == fingerprint(current, relative)

    def save_manifest() -> None:
        manifest.update(version=version, files=records)
        _write_atomically(folder / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def write_copy(item: CourseFile) -> str:
        """Write the new version of an edited file beside it; return its relative path."""
        attempt = 1
        while True:
            relative = versioned_name(item.relative, version, attempt)
            target = folder / relative
            if not target.is_file():
                write(relative, item.content)
                return relative
            current = target.read_bytes()
            if fingerprint(current, relative) == fingerprint(item.content, relative):
                return relative
            if unchanged_since_written(relative, current):
                write(relative, item.content)
                return relative
            attempt += 1

    try:
        for item in files:
            target = folder / item.relative
            new = fingerprint(item.content, item.relative)
            if not target.is_file():
                write(item.relative, item.content)
                report.actions.append(Action(item.relative, "written"))
                continue
            current = target.read_bytes()
            if fingerprint(current, item.relative) == new:
                records[item.relative] = {"sha256": hashlib.sha256(current).hexdigest(), "fingerprint": new,
                                          "version": version}
                report.actions.append(Action(item.relative, "current"))
            elif unchanged_since_written(item.relative, current):
                write(item.relative, item.content)
                report.actions.append(Action(item.relative, "updated"))
            elif force and item.part != EXERCISES:
                write(item.relative, item.content)
                report.actions.append(Action(item.relative, "replaced"))
            elif records.get(item.relative, {}).get("fingerprint") == new:  # no newer version since it was written
                report.actions.append(Action(item.relative, "yours"))
            else:
                report.actions.append(Action(item.relative, "kept", write_copy(item)))
    except OSError as error:
        if report.actions:  # remember what was written before the error
            with contextlib.suppress(OSError):
                save_manifest()
        raise CourseError(f"Cannot write the course into {folder}: {error.strerror or error}. "
                          "Choose a folder of your own.") from error
    try:
        save_manifest()
    except OSError as error:
        raise CourseError(f"Cannot write {folder / MANIFEST}: {error.strerror or error}.") from error
    return report


# --------------------------------------------------------------------------------------------------------------
# Finding a lecture (viztools present)
# --------------------------------------------------------------------------------------------------------------


def find_lecture(query: str, lectures: Iterable[Path]) -> Path:
    """The lecture ``query`` names: its number (``3`` or ``03``) or a fragment of its name (``occlusion``)."""
    lectures = sorted(lectures)
    numbered = {int(NOTEBOOK_NAME.match(p.name).group(1)): p for p in lectures if NOTEBOOK_NAME.match(p.name)}
    text = str(query).strip()
    if text.isdigit() and int(text) in numbered:
        return numbered[int(text)]
    matches = [] if text.isdigit() or not text else [p for p in lectures if text.lower() in p.stem.lower()]
    if len(matches) == 1:
        return matches[0]
    listing = "\n".join(f"  {p.stem}" for p in lectures) or "  (none)"
    if len(matches) > 1:
        names = ", ".join(p.stem for p in matches)
        raise CourseError(f"{query!r} matches several lectures ({names}); give its number. The lectures:\n{listing}")
    raise CourseError(f"No lecture {query!r}; give its number (3 or 03) or part of its name. The lectures:\n"
                      f"{listing}")
