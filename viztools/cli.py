"""The viztools command: course information, model weights, training GlyphNet, JupyterLab, exercises and grading.

Each subcommand imports what it needs (torch, the model zoo, the grader) when it runs, so that
``viztools --version``, ``viztools --help`` and ``viztools lab`` start without loading torch.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from viztools import __version__

DESCRIPTION = ("The viztools command: the course's models and their weights, GlyphNet training, JupyterLab for "
               "the lectures, exercises and grading.")
#: The notebook that `viztools lab` opens when the folder it serves has it.
FIRST_LECTURE = "00_getting_started.ipynb"
#: Ports `viztools lab` tries, in order, when no --port is given (JupyterLab's default first).
LAB_PORTS = range(8888, 8988)
#: The folder above the viztools package: the clone's root for an editable install (else site-packages).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _info(args: argparse.Namespace) -> int:
    from viztools import models

    print(f"viztools {__version__}")
    folders = ", ".join(str(p) for p in models._weights_dirs()) or "(not set)"
    print(f"{models.WEIGHTS_DIR_ENV}: {folders}")
    print("Models (weights available offline?):")
    for name, path in models.model_availability():
        status = f"yes  {path}" if path else "no   (download with 'viztools download NAME', or see README)"
        print(f"  {name:<14} {status}")
    auto = next((n for n in models.AUTO_PREFERENCE if models.find_local_weights(n)), "glyphnet")
    print(f"load_model('auto') would use: {auto}")
    return 0


class _DownloadableModels:
    """The ImageNet model names, looked up in viztools.models (which imports torch) only when argparse asks."""

    def __iter__(self) -> Iterator[str]:
        from viztools import models

        return (name for name in models.MODEL_NAMES if name != "glyphnet")

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def _download(args: argparse.Namespace) -> int:
    from viztools import models

    path = models.download_weights(args.model)
    print(f"{args.model}: {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from viztools.models import GLYPHNET_WEIGHTS
    from viztools.training import train_glyphnet

    output = args.output or GLYPHNET_WEIGHTS
    report = train_glyphnet(output, train_images=args.images, epochs=args.epochs, seed=args.seed,
                            workers=args.workers)
    print(f"Saved {output}: held-out accuracy {report.held_out_accuracy:.2%} on {report.held_out_images} "
          f"fresh images, {report.seconds:.0f} s.")
    return 0


# --------------------------------------------------------------------------------------------------------------
# viztools lab
# --------------------------------------------------------------------------------------------------------------


def default_lab_folder(cwd: Path | None = None) -> Path:
    """The folder `viztools lab` serves by default: the lectures/ of a clone (the current folder, else the clone
    viztools is installed from in editable mode), else the current folder."""
    cwd = Path.cwd() if cwd is None else cwd
    for lectures in (cwd / "lectures", SOURCE_ROOT / "lectures"):
        if (lectures / FIRST_LECTURE).is_file():
            return lectures
    return cwd


def browser_available() -> bool:
    """Whether JupyterLab should open a browser: $BROWSER is set, or a desktop session (macOS, Windows, or an
    X11/Wayland display) is there. Elsewhere (servers, containers, SSH) it would find none, or a text browser."""
    return bool(os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or sys.platform in ("darwin", "win32"))


def is_root() -> bool:
    """Whether this process runs as root (JupyterLab refuses to, unless given --allow-root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def free_port(ip: str, ports: Sequence[int] = LAB_PORTS) -> int:
    """The first of ``ports`` that nobody listens on at ``ip``."""
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as probe:
            try:
                probe.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"No free port among {ports[0]}-{ports[-1]} at {ip}; choose one with --port.")


def lab_url(ip: str, port: int, token: str, folder: Path) -> str:
    """The URL that opens JupyterLab (on the first lecture when ``folder`` has it), token included."""
    host = socket.gethostname() if ip in ("0.0.0.0", "::", "*", "") else ip
    host = f"[{host}]" if ":" in host else host
    page = f"lab/tree/{FIRST_LECTURE}" if (folder / FIRST_LECTURE).is_file() else "lab"
    return f"http://{host}:{port}/{page}?token={token}"


def jupyter_lab_command(folder: Path, *, ip: str, port: int, open_browser: bool, as_root: bool) -> list[str]:
    """The command line that starts JupyterLab on ``folder`` (opening its first lecture when it has one)."""
    first_lecture = folder / FIRST_LECTURE
    command = [sys.executable, "-m", "jupyterlab", str(first_lecture if first_lecture.is_file() else folder),
               f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if not open_browser:
        command.append("--no-browser")
    if as_root:
        command.append("--allow-root")
    return command


def _lab(args: argparse.Namespace) -> int:
    folder = (args.folder or default_lab_folder()).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder. Pass the folder of notebooks to serve.")
    port = args.port or free_port("127.0.0.1" if args.ip == "localhost" else args.ip)
    # The token travels in the environment, not on the command line where other users could read it (ps).
    token = args.token or os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    open_browser = not args.no_browser and browser_available()
    as_root = is_root()
    command = jupyter_lab_command(folder, ip=args.ip, port=port, open_browser=open_browser, as_root=as_root)
    print(f"Starting JupyterLab in {folder}" + (" (running as root: --allow-root)" if as_root else "") + ".")
    print("Once it has started (a few seconds), open this URL in a browser"
          + ("" if open_browser else " (none is opened on this machine)") + ":\n")
    print(f"    {lab_url(args.ip, port, token, folder)}\n")
    print("Stop JupyterLab with Ctrl+C (twice to skip its question).", flush=True)
    env = {**os.environ, "JUPYTER_TOKEN": token}
    if os.name == "posix":  # become the server, so that its process id is this one and Ctrl+C reaches it alone
        os.execve(sys.executable, command, env)
    return subprocess.call(command, env=env)


# --------------------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The viztools argument parser (building it imports neither torch nor the grader's dependencies)."""
    from viztools.grading.cli import add_commands

    parser = argparse.ArgumentParser(prog="viztools", description=DESCRIPTION,
                                     epilog="Run 'viztools COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"viztools {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="list the models and whether their weights are available offline",
                               description="List the models, whether their weights are available offline, and "
                               "which model load_model('auto') would use.")
    info.set_defaults(run=_info)

    download = commands.add_parser("download", help="download a model's ImageNet weights into the torch hub cache",
                                   description="Download a model's ImageNet weights into the torch hub cache "
                                   "(needs internet; 'viztools info' shows what is available offline).")
    download.add_argument("model", choices=_DownloadableModels(), metavar="MODEL", help="one of: %(choices)s")
    download.set_defaults(run=_download)

    train = commands.add_parser("train-glyphnet", help="re-create the built-in GlyphNet weights (deterministic)",
                                description="Train GlyphNet on freshly generated GlyphWorld images and save its "
                                "weights (deterministic; about 17 minutes on 2 CPU cores).")
    train.add_argument("--output", type=Path, default=None, metavar="FILE",
                       help="where to save (default: the package's weights/glyphnet.pt)")
    train.add_argument("--images", type=int, default=20_000, help="training images (default: %(default)s)")
    train.add_argument("--epochs", type=int, default=4, help="passes over the images (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    train.add_argument("--workers", type=int, default=2,
                       help="processes that generate images (default: %(default)s)")
    train.set_defaults(run=_train)

    lab = commands.add_parser(
        "lab", help="open the course in JupyterLab (prints the URL to open)",
        description="Start JupyterLab in DIR and open the first lecture when DIR has it. Works as root (passes "
        "--allow-root) and on machines without a browser (prints the URL, with its access token, to open "
        "elsewhere). Stop it with Ctrl+C.")
    lab.add_argument("folder", nargs="?", type=Path, metavar="DIR",
                     help="folder to serve (default: the lectures/ folder of a viztools clone, else the current "
                     "folder)")
    lab.add_argument("--port", type=int, default=None,
                     help=f"port to listen on (default: the first free one from {LAB_PORTS[0]})")
    lab.add_argument("--ip", default="localhost",
                     help="address to listen on (default: %(default)s; 0.0.0.0 to reach it from other machines)")
    lab.add_argument("--token", default=None,
                     help="access token in the URL (default: $JUPYTER_TOKEN, else a random one)")
    lab.add_argument("--no-browser", action="store_true",
                     help="do not open a browser (the default where no desktop session is found)")
    lab.set_defaults(run=_lab)

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the viztools command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"viztools: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("viztools: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
