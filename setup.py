"""Build hook: the wheel ships the course's lecture and exercise notebooks (never the solutions).

The repository keeps lectures/ and exercises/ at its top level, where CI runs them. Building a wheel copies them
into the package as viztools/_course/{lectures,exercises}, where `viztools course` finds them once installed; an
editable install skips the copy (`viztools course` reads the clone's own folders). Everything else about the
package is in pyproject.toml; MANIFEST.in puts the two folders into the sdist, so a wheel built from it has them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: Course parts copied into the wheel; solutions/ is deliberately not among them.
COURSE_PARTS = ("lectures", "exercises")


class BuildPyWithCourse(build_py):
    """build_py, plus the course notebooks copied to viztools/_course/ in the build folder."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for part in COURSE_PARTS:
            notebooks = sorted((HERE / part).glob("[0-9][0-9]_*.ipynb"))
            if not notebooks:
                raise SystemExit(f"setup.py: no notebooks in {HERE / part}; the course cannot be packaged.")
            target = Path(self.build_lib) / "viztools" / "_course" / part
            if target.exists():
                shutil.rmtree(target)  # a notebook removed since the last build must not linger
            target.mkdir(parents=True)
            for notebook in notebooks:
                self.copy_file(str(notebook), str(target / notebook.name))


setup(cmdclass={"build_py": BuildPyWithCourse})
