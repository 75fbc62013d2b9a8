"""The nbval internals that viztools relies on are still there (fast: no kernel is started).

``viztools build-exercises`` runs solutions in a kernel of the current environment through nbval's
``NbvalKernelspecManager`` and ``CURRENT_ENV_KERNEL_NAME``; ``make test`` runs the lectures with nbval's
``--nbval-lax``/``--nbval-current-env``/``--nbval-cell-timeout``; and, while ``viztools/grading/_pytest_plugin.py``
exists, ``viztools grade`` loads it next to nbval: it wraps ``nbval.kernel.RunningKernel.await_reply`` (a dead kernel
fails at once instead of after the cell timeout) and reads nbval's items (``item.cell``, ``item.cell_num``,
``item.test_outputs``, ``item.parent.kernel.km``) and error messages (``NbCellError``: "Cell outputs differ", ...).
None of that is public API, so pyproject.toml pins nbval to the range these tests passed on. When one of them fails
after an nbval upgrade, adapt viztools to the new nbval and then widen the pin.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from importlib.metadata import version
from pathlib import Path
from queue import Empty

import pytest
from packaging.requirements import Requirement

nbval_kernel = pytest.importorskip("nbval.kernel")
nbval_plugin = pytest.importorskip("nbval.plugin")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
HAS_GRADING_PLUGIN = importlib.util.find_spec("viztools.grading._pytest_plugin") is not None
needs_grading_plugin = pytest.mark.skipif(
    not HAS_GRADING_PLUGIN, reason="viztools.grading no longer has an nbval plugin (_pytest_plugin.py)"
)


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


def test_build_exercises_kernel_of_the_current_environment() -> None:
    """viztools/grading/build.py: ``KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager())``."""
    assert isinstance(getattr(nbval_kernel, "CURRENT_ENV_KERNEL_NAME", None), str), broken(
        "nbval.kernel.CURRENT_ENV_KERNEL_NAME is gone"
    )
    assert hasattr(nbval_kernel, "NbvalKernelspecManager"), broken("nbval.kernel.NbvalKernelspecManager is gone")
    spec = nbval_kernel.NbvalKernelspecManager().get_kernel_spec(nbval_kernel.CURRENT_ENV_KERNEL_NAME)
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), broken(
        f"NbvalKernelspecManager no longer starts this environment's Python for CURRENT_ENV_KERNEL_NAME: {spec.argv}"
    )


def test_the_command_line_options_viztools_passes_exist() -> None:
    source = inspect.getsource(nbval_plugin.pytest_addoption)
    options = ["--nbval", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout"]
    if HAS_GRADING_PLUGIN:
        options.append("--nbval-sanitize-with")
    for option in options:
        assert f"'{option}'" in source or f'"{option}"' in source, broken(f"nbval no longer has {option}")


@needs_grading_plugin
def test_running_kernel_await_reply_keeps_the_signature_the_plugin_wraps() -> None:
    running_kernel = nbval_kernel.RunningKernel
    assert hasattr(running_kernel, "await_reply"), broken("nbval.kernel.RunningKernel.await_reply is gone")
    parameters = list(inspect.signature(running_kernel.await_reply).parameters)
    assert parameters[:3] == ["self", "msg_id", "timeout"], broken(
        f"RunningKernel.await_reply{inspect.signature(running_kernel.await_reply)} changed signature"
    )
    assert callable(getattr(running_kernel, "is_alive", None)), broken("RunningKernel.is_alive() is gone")
    assert "self.km" in inspect.getsource(running_kernel.__init__), broken("RunningKernel no longer sets .km")
    runtest = inspect.getsource(nbval_plugin.IPyNbCell.runtest)
    assert "await_reply(" in runtest and "except Empty" in runtest, broken(
        "IPyNbCell.runtest no longer waits with kernel.await_reply(...) and treats queue.Empty as a timeout"
    )


class FakeKernel:
    """Stands in for a RunningKernel: the real (unpatched) await_reply reads messages through ``get_message``."""

    def __init__(self, alive: bool, replies: list[dict] | None = None) -> None:
        self.alive, self.replies, self.timeouts = alive, list(replies or []), []

    def get_message(self, stream: str, timeout: float | None = None) -> dict:
        assert stream == "shell"
        self.timeouts.append(timeout)
        if not self.replies:
            raise Empty
        return self.replies.pop(0)

    def is_alive(self) -> bool:
        return self.alive


@needs_grading_plugin
def test_the_wrapped_await_reply_polls_returns_and_detects_a_dead_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from viztools.grading import _pytest_plugin

    running_kernel = nbval_kernel.RunningKernel
    monkeypatch.setattr(running_kernel, "await_reply", running_kernel.await_reply)  # restored after the test
    monkeypatch.setattr(_pytest_plugin, "POLL_SECONDS", 0.01)
    _pytest_plugin._watch_for_dead_kernels()
    wrapped = running_kernel.await_reply
    assert getattr(wrapped, "_viztools_watch", False)

    reply = {"parent_header": {"msg_id": "m1"}, "content": {"status": "ok"}}
    alive = FakeKernel(alive=True, replies=[reply])
    assert wrapped(alive, "m1", timeout=5) is None
    assert alive.timeouts == [0.01], broken("RunningKernel.await_reply no longer passes its timeout to get_message")

    with pytest.raises(_pytest_plugin.KernelDiedError):
        wrapped(FakeKernel(alive=False), "m1", timeout=5)
    with pytest.raises(Empty):  # nbval's own timeout path: queue.Empty after the cell timeout
        wrapped(FakeKernel(alive=True), "m1", timeout=0.03)


@needs_grading_plugin
def test_cell_items_carry_the_attributes_the_plugin_reads() -> None:
    cell_init = inspect.getsource(nbval_plugin.IPyNbCell.__init__)
    for attribute in ("cell_num", "cell", "test_outputs"):
        assert re.search(rf"self\.{attribute}\s*=", cell_init), broken(f"IPyNbCell no longer sets .{attribute}")
    assert "self.test_outputs = outs" in inspect.getsource(nbval_plugin.IPyNbCell.runtest), broken(
        "IPyNbCell.runtest no longer records the cell's outputs in .test_outputs"
    )
    assert re.search(r"self\.kernel\s*=\s*RunningKernel\(", inspect.getsource(nbval_plugin.IPyNbFile.setup)), broken(
        "IPyNbFile.setup no longer starts a RunningKernel as .kernel"
    )


@needs_grading_plugin
def test_cell_errors_keep_the_messages_the_plugin_classifies() -> None:
    from viztools.grading import _pytest_plugin

    assert hasattr(nbval_plugin, "NbCellError"), broken("nbval.plugin.NbCellError is gone")
    error = nbval_plugin.NbCellError(3, "Cell outputs differ", "print(1)")
    assert (str(error), error.cell_num) == ("Cell outputs differ", 3), broken("NbCellError's message or cell_num")
    assert _pytest_plugin._classify(error) == "mismatch"
    source = inspect.getsource(nbval_plugin)
    for message in ("Cell outputs differ", "Cell execution caused an exception", "Kernel dead on test start",
                    "Timeout of"):
        assert message in source, broken(f"nbval no longer raises {message!r}")
