"""The nbval internals that viztools relies on are still there (fast: no kernel is started).

``viztools build-exercises`` (viztools/grading/build.py) runs each solution in a kernel of the current environment
through nbval's ``NbvalKernelspecManager`` and ``CURRENT_ENV_KERNEL_NAME``, and ``make test`` runs the lectures with
nbval's ``--nbval-lax``, ``--nbval-current-env`` and ``--nbval-cell-timeout``. The kernel-spec manager is not public
API, so pyproject.toml pins nbval to the range these tests passed on. (Until issue 10, ``viztools grade`` also
patched ``nbval.kernel.RunningKernel.await_reply`` through a pytest plugin; grading itself no longer uses nbval.)
When one of these tests fails after an nbval upgrade, adapt viztools to the new nbval and then widen the pin.
"""

from __future__ import annotations

import inspect
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

nbval_kernel = pytest.importorskip("nbval.kernel")
nbval_plugin = pytest.importorskip("nbval.plugin")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def nbval_pin_text() -> str:
    """The nbval requirement as written in pyproject.toml, e.g. ``nbval>=0.11,<0.12``."""
    text = PYPROJECT.read_text(encoding="utf-8")
    found = re.search(r'^\s*"(nbval[^"]*)"', text, flags=re.MULTILINE)
    assert found, "pyproject.toml lists no nbval dependency"
    return found.group(1)


PIN = nbval_pin_text()


def broken(what: str) -> str:
    return (
        f"{what}: viztools relies on this nbval internal, pinned by {PIN!r} in pyproject.toml (installed: nbval "
        f"{version('nbval')}). Adapt viztools to this nbval before widening the pin."
    )


def test_nbval_is_pinned_to_a_tested_minor_release_and_the_installed_one_is_inside() -> None:
    pin = Requirement(PIN)
    upper = [spec for spec in pin.specifier if spec.operator in ("<", "<=", "==", "~=")]
    assert upper, f"nbval must be pinned with an upper bound (e.g. 'nbval>=0.11,<0.12'); pyproject.toml has {PIN!r}"
    installed = version("nbval")
    assert pin.specifier.contains(installed, prereleases=True), (
        f"nbval {installed} is installed but pyproject.toml pins {PIN!r}: viztools relies on nbval internals that "
        "were only tested inside the pin. Reinstall (`make install`), or adapt viztools and widen the pin."
    )


def test_build_exercises_gets_a_kernel_of_the_current_environment() -> None:
    """viztools/grading/build.py: ``KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager())``."""
    assert isinstance(getattr(nbval_kernel, "CURRENT_ENV_KERNEL_NAME", None), str), broken(
        "nbval.kernel.CURRENT_ENV_KERNEL_NAME is gone"
    )
    assert hasattr(nbval_kernel, "NbvalKernelspecManager"), broken("nbval.kernel.NbvalKernelspecManager is gone")
    spec = nbval_kernel.NbvalKernelspecManager().get_kernel_spec(nbval_kernel.CURRENT_ENV_KERNEL_NAME)
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), broken(
        f"NbvalKernelspecManager no longer starts this environment's Python for CURRENT_ENV_KERNEL_NAME: {spec.argv}"
    )


def test_the_command_line_options_make_test_passes_exist() -> None:
    source = inspect.getsource(nbval_plugin.pytest_addoption)
    for option in ("--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout"):
        assert f"'{option}'" in source or f'"{option}"' in source, broken(f"nbval no longer has {option}")
