"""Running student code in a box: a fresh folder, a minimal environment, limits, and nothing left behind.

Each graded notebook gets its own scratch folder (the only place its code may write) and a kernel process
started in a new session with ``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (processes), ``RLIMIT_FSIZE``, no core
files and a minimal environment (``HOME`` in the scratch folder, one thread, none of the grader's variables, so no
tokens). When the grader runs as root, each kernel switches to an unprivileged uid of its own before any student
code runs (not shared with any other kernel, so one notebook's fork bomb cannot use up another's process limit):
it can neither write the submissions nor signal the grader's processes. Where bubblewrap works (checked at run time
with ``bwrap ... true``) the kernel also runs in its own mount, PID, network, IPC and UTS namespaces (and a user
namespace when the grader is not root): the file system read-only except the scratch folder, home folders empty,
the submissions, hidden checks and grader outputs covered, no network. Without bubblewrap the same limits apply and
the submissions stay read-only to the kernel's uid. Killing the box kills its process group, every process carrying
the run's marker variable or the kernel's own uid (found in ``/proc``) and, with bubblewrap, the whole PID
namespace, so detached children (``start_new_session=True``, even with a cleared environment) die too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Default address-space limit. Importing torch alone maps about 3.2 GB of address space (measured: VmPeak 3.7 GB
#: after loading GlyphNet), so 6 GB leaves room for an exercise's tensors while stopping a runaway allocation.
DEFAULT_MEMORY_GB = 6.0
DEFAULT_MAX_PROCESSES = 64
#: Seconds each cell, and each call of a student's function, may run; seconds one notebook's grading may take.
DEFAULT_CELL_TIMEOUT = 60.0
DEFAULT_WALL_SECONDS = 600.0
#: The largest file the kernel may write (its log included).
MAX_FILE_BYTES = 1 << 30
MARKER_VARIABLE = "VIZTOOLS_GRADING_RUN"
#: When the grader is root, each kernel runs as a random uid in [KERNEL_UID_BASE, KERNEL_UID_BASE + KERNEL_UID_COUNT)
#: that no account uses, so kernels running at the same time (almost surely) never share a uid.
KERNEL_UID_BASE, KERNEL_UID_COUNT = 200_000, 1_000_000
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: The kernel's whole environment: nothing is inherited from the grader's (no tokens, no proxies, no paths).
BASE_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "TQDM_DISABLE": "0",
    "CUDA_VISIBLE_DEVICES": "",  # grading runs on the CPU whatever the machine has: the same score everywhere
}


@dataclass
class Limits:
    """Per-notebook limits: memory in GB (``RLIMIT_AS``), processes (``RLIMIT_NPROC``), wall-clock seconds."""

    memory_gb: float = DEFAULT_MEMORY_GB
    max_processes: int = DEFAULT_MAX_PROCESSES
    wall_seconds: float = DEFAULT_WALL_SECONDS


def _kernel_ids() -> tuple[int, int] | None:
    """(uid, gid) for a new kernel: unused unprivileged ids when the grader runs as root and the kernel can run
    Python as such a uid, else None (the grader's own user)."""
    if os.geteuid() != 0 or not (bubblewrap_works() or own_uid_works()):
        return None
    uid = KERNEL_UID_BASE + secrets.randbelow(KERNEL_UID_COUNT)
    return uid, uid


@functools.lru_cache(maxsize=1)
def own_uid_works() -> bool:
    """Whether Python still imports its standard library and IPython after switching to an unprivileged uid
    (not when the installation sits in root's private home, as with pyenv in /root; bubblewrap binds it in)."""
    uid = KERNEL_UID_BASE
    code = (f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); import pkgutil, IPython")
    try:
        result = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _user_processes(uid: int) -> int:
    """How many processes (threads count too) ``uid`` runs now: RLIMIT_NPROC counts them all."""
    count = 0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += len(list((entry / "task").iterdir()))
    return count


def _bwrap_base() -> list[str]:
    """Namespaces for everything but the user when root (the kernel then drops to its own uid inside, which keeps
    RLIMIT_NPROC effective); an unprivileged grader needs a user namespace too."""
    namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        namespaces += ["--unshare-user", "--cap-drop", "ALL"]
    return [*namespaces, "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run"]


#: Folders the kernel gets empty (``/tmp`` and ``/run`` by :func:`_bwrap_base`, the homes by :func:`_bwrap_prefix`).
PRIVATE_FOLDERS = ("/tmp", "/run", "/root", "/home")


@functools.lru_cache(maxsize=1)
def bubblewrap_works() -> bool:
    """Whether ``bwrap --unshare-... true`` runs here (checked once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        result = subprocess.run([bwrap, *_bwrap_base(), "true"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def isolation_summary() -> str:
    """How kernels are isolated on this machine, for reports and benchmarks."""
    user = "an unprivileged user id per kernel" if _kernel_ids() else "the grader's own user"
    if bubblewrap_works():
        return f"bubblewrap (mount, PID, network, IPC namespaces; read-only file system) + setrlimit, as {user}"
    return f"no bubblewrap: setrlimit, a new session and a private folder, as {user}"


#: Seconds to wait for killed processes to disappear before grading goes on.
KILL_WAIT = 5.0


@dataclass
class Box:
    """One running sandboxed process and what is needed to stop it and everything it started."""

    process: subprocess.Popen
    marker: str
    scratch: Path
    uid: int | None = None
    started: float = field(default_factory=time.monotonic)

    def kill(self) -> None:
        """Kill the box's process group, every process carrying the run's marker and, when the kernel has a uid of
        its own, every process of that uid (detached children that cleared their environment too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while True:  # a child may fork while we scan, and a killed process takes a moment to go: scan until none
            pids = set(marked_processes(self.marker))
            if self.uid is not None:
                pids |= set(user_processes(self.uid))
            pids = {pid for pid in pids if _running(pid)}
            if not pids or time.monotonic() > deadline:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def _running(pid: int) -> bool:
    """False for a process that is gone or a zombie (dead, waiting to be reaped)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def user_processes(uid: int) -> list[int]:
    """Process ids owned by ``uid`` (read from ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append(int(entry.name))
    return found


def marked_processes(marker: str) -> list[int]:
    """Process ids whose environment holds ``VIZTOOLS_GRADING_RUN=<marker>`` (read from ``/proc``)."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def kill_marked(marker: str) -> int:
    """SIGKILL every process carrying ``marker``; return how many were found."""
    pids = marked_processes(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def make_scratch(parent: Path) -> tuple[Path, tuple[int, int] | None]:
    """A fresh, private scratch folder inside ``parent`` and the ids of the kernel that will own it."""
    scratch = parent / "scratch"
    scratch.mkdir(mode=0o700)
    (scratch / "home").mkdir()
    ids = _kernel_ids()
    if ids is not None:
        parent.chmod(0o711)  # the kernel's user may pass through to its scratch folder, not list the parent
        for path in (scratch, scratch / "home"):
            os.chown(path, *ids)
    return scratch, ids


def _set_limits(limits: Limits, processes: int) -> None:
    """In the child before exec: a new session and the limits (the kernel drops to its own uid itself)."""
    os.setsid()
    memory = int(limits.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))


def _needed_paths() -> list[Path]:
    """What the kernel must read: the Python installation, the environment, the folders on sys.path, viztools."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent, PACKAGE_ROOT}
    paths |= {Path(entry) for entry in sys.path if entry and Path(entry).is_absolute() and Path(entry).is_dir()}
    return sorted(paths)


def _bwrap_prefix(scratch: Path, hidden: Sequence[Path]) -> list[str]:
    """bwrap: everything read-only, private /tmp and home folders, ``hidden`` covered, only ``scratch`` writable.

    The home folders are replaced by empty ones (no keys or tokens to read); the Python installation and viztools
    are bound back in where they live, readable by the kernel's user even when they sit in root's home.
    """
    command = [shutil.which("bwrap") or "bwrap", *_bwrap_base(), "--tmpfs", "/root", "--tmpfs", "/home"]
    needed, made = _needed_paths(), set()

    def bind(path: Path, how: str) -> None:
        for parent in reversed(path.parents[:-2]):  # traversable folders down to it (bwrap would make them 0700)
            if parent not in made:
                command.extend(["--perms", "0755", "--dir", str(parent)])
                made.add(parent)
        command.extend([how, str(path), str(path)])

    for path in needed:  # a checkout or venv under a private folder (root's home, /tmp in CI) is bound back
        if any(path.is_relative_to(folder) for folder in PRIVATE_FOLDERS):
            bind(path, "--ro-bind")
    for folder in hidden:
        if folder.is_dir() and not any(p.is_relative_to(folder) for p in (scratch, *needed)):
            command += ["--tmpfs", str(folder)]
    bind(scratch, "--bind")
    return [*command, "--chdir", str(scratch)]


def new_marker() -> str:
    """A fresh value for the run's marker variable."""
    return secrets.token_hex(16)


def start(command: Sequence[str], scratch: Path, ids: tuple[int, int] | None, *, limits: Limits,
          hide: Sequence[Path] = (), pass_fds: Sequence[int] = (), log: Path | None = None,
          marker: str | None = None) -> Box:
    """Start ``command`` boxed in ``scratch``; ``hide``: folders to cover. ``command`` itself must switch to ``ids``
    (from :func:`make_scratch`) before it runs untrusted code: it starts as the grader's user, inside bubblewrap's
    namespaces where available, with the limits already set (so the kernel's own uid cannot raise them).

    Without bubblewrap the folders in ``hide`` stay visible but, when the grader runs as root, not writable.
    ``marker`` (default: a fresh one) tags every process of the box for :func:`kill_marked`.
    """
    marker = marker or new_marker()
    env = {**BASE_ENVIRONMENT, "HOME": str(scratch / "home"), "TMPDIR": str(scratch), MARKER_VARIABLE: marker}
    # RLIMIT_NPROC counts every process of the user: a kernel's own user starts from zero, the grader's does not
    processes = limits.max_processes + (0 if ids else _user_processes(os.getuid()))
    prefix = _bwrap_prefix(scratch, [Path(p).resolve() for p in hide]) if bubblewrap_works() else []
    output = open(log or os.devnull, "wb")  # noqa: SIM115 - handed to the child, closed right after the start
    try:
        process = subprocess.Popen(
            [*prefix, *command], cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            pass_fds=tuple(pass_fds), preexec_fn=functools.partial(_set_limits, limits, processes),
        )
    finally:
        output.close()
    return Box(process, marker, scratch, ids[0] if ids else None)
