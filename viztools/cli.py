"""The viztools command: the course folder, JupyterLab, presenting a lecture (Voila), model weights, training
GlyphNet, exercises and grading.

Each subcommand imports what it needs (torch, the model zoo, the grader) when it runs, so that
``viztools --version``, ``viztools --help``, ``viztools course``, ``viztools lab`` and ``viztools present`` start
without loading torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from viztools import __version__, course

DESCRIPTION = ("The viztools command: the course's notebooks in a folder of your own, JupyterLab for them, a "
               "lecture as an app for class, the models and their weights, GlyphNet training, exercises and "
               "grading.")
#: The notebook that `viztools lab` opens when the folder it serves has it (or has it in lectures/).
FIRST_LECTURE = course.FIRST_LECTURE
#: Ports `viztools lab` and `viztools present` try, in order, when no --port is given (JupyterLab's default first).
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
# viztools course, viztools lab, viztools present
# --------------------------------------------------------------------------------------------------------------


def _has_notebooks(folder: Path) -> bool:
    """Whether ``folder`` holds notebooks, directly or one level down (a course's lectures/ and exercises/)."""
    return any(folder.glob("*.ipynb")) or any(folder.glob("*/*.ipynb"))


def default_lab_folder(cwd: Path | None = None) -> Path:
    """The folder `viztools lab` serves by default: the current folder when it is a course, the lectures/ of a
    clone (the current folder, else the clone viztools is installed from in editable mode), ./viztools-course when
    it is a course, the current folder when it holds notebooks, else ./viztools-course (written first)."""
    cwd = Path.cwd() if cwd is None else cwd
    if course.is_course(cwd):
        return cwd
    for lectures in (cwd / "lectures", SOURCE_ROOT / "lectures"):
        if (lectures / FIRST_LECTURE).is_file():
            return lectures
    if course.is_course(cwd / course.DEFAULT_FOLDER) or not any(cwd.glob("*.ipynb")):
        return cwd / course.DEFAULT_FOLDER
    return cwd


def first_notebook(folder: Path) -> Path | None:
    """The notebook JupyterLab opens first: lecture 00 in ``folder`` or in its lectures/ (a course folder)."""
    for candidate in (folder / FIRST_LECTURE, folder / course.LECTURES / FIRST_LECTURE):
        if candidate.is_file():
            return candidate
    return None


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


def _url(ip: str, port: int, page: str, token: str) -> str:
    host = socket.gethostname() if ip in ("0.0.0.0", "::", "*", "") else ip
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/{page}?token={token}"


def lab_url(ip: str, port: int, token: str, folder: Path) -> str:
    """The URL that opens JupyterLab (on the first lecture when ``folder`` has it), token included."""
    first = first_notebook(folder)
    return _url(ip, port, f"lab/tree/{first.relative_to(folder).as_posix()}" if first else "lab", token)


def jupyter_lab_command(folder: Path, *, ip: str, port: int, open_browser: bool, as_root: bool) -> list[str]:
    """The command line that starts JupyterLab on ``folder`` (opening its first lecture when it has one)."""
    first = first_notebook(folder)
    command = [sys.executable, "-m", "jupyterlab", str(first or folder), f"--ServerApp.root_dir={folder}",
               f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if not open_browser:
        command.append("--no-browser")
    if as_root:
        command.append("--allow-root")
    return command


def _serve(name: str, command: list[str], url: str, *, open_browser: bool, env: dict[str, str],
           cwd: Path | None = None) -> int:
    """Print where to open the server, then become it (POSIX: its process id is this one, Ctrl+C reaches it)."""
    print("Once it has started (a few seconds), open this URL in a browser"
          + ("" if open_browser else " (none is opened on this machine)") + ":\n")
    print(f"    {url}\n")
    print(f"Stop {name} with Ctrl+C" + (" (twice to skip its question)." if name == "JupyterLab" else "."),
          flush=True)
    if os.name == "posix":
        if cwd is not None:
            os.chdir(cwd)
        os.execve(sys.executable, command, env)  # does not return
        return 0
    return subprocess.call(command, env=env, cwd=cwd)


def _course(args: argparse.Namespace) -> int:
    folder = args.folder or Path(course.DEFAULT_FOLDER)
    report = course.write_course(folder, force=args.force)
    print(report.summary())
    print(f"\nOpen it in JupyterLab with:  viztools lab {folder}")
    return 0


def lab_folder(folder: Path | None, cwd: Path | None = None) -> tuple[Path, bool]:
    """The folder `viztools lab` serves, and whether the course must be written there first (it does not exist
    yet, or holds no notebooks)."""
    chosen = (folder if folder is not None else default_lab_folder(cwd)).expanduser().absolute()
    if chosen.exists() and not chosen.is_dir():
        raise course.CourseError(f"{chosen} is a file, not a folder. Pass a folder: viztools lab DIR")
    return chosen, not (chosen.is_dir() and _has_notebooks(chosen))


def _lab(args: argparse.Namespace) -> int:
    folder, needs_course = lab_folder(args.folder)
    if needs_course:
        print(course.write_course(folder).summary() + "\n")
    elif course.is_course(folder) and course.course_version(folder) != __version__:
        print(f"This course was written by viztools {course.course_version(folder)}; you have {__version__}. "
              f"'viztools course {folder}' brings it up to date (your edits are kept).\n")
    port = args.port or free_port("127.0.0.1" if args.ip == "localhost" else args.ip)
    # The token travels in the environment, not on the command line where other users could read it (ps).
    token = args.token or os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    open_browser = not args.no_browser and browser_available()
    as_root = is_root()
    command = jupyter_lab_command(folder, ip=args.ip, port=port, open_browser=open_browser, as_root=as_root)
    print(f"Starting JupyterLab in {folder}" + (" (running as root: --allow-root)" if as_root else "") + ".")
    return _serve("JupyterLab", command, lab_url(args.ip, port, token, folder), open_browser=open_browser,
                  env={**os.environ, "JUPYTER_TOKEN": token})


#: Voila's template for `viztools present` (its lab template without CDN requests), found through JUPYTER_PATH.
PRESENT_TEMPLATE_ROOT = Path(__file__).resolve().parent / "_voila"
PRESENT_TEMPLATE = "viztools"


def lecture_folder(folder: Path | None, cwd: Path | None = None) -> Path:
    """The folder of lecture notebooks `viztools present` picks from: DIR (a course folder or a folder of
    lectures), else the course or clone in the current folder, the clone viztools is installed from, the current
    folder, ./viztools-course, and last the lectures inside the installed package."""
    cwd = Path.cwd() if cwd is None else cwd
    if folder is not None:
        folder = folder.expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise course.CourseError(f"{folder} is a file, not a folder. Pass the course folder: "
                                     "viztools present NN DIR")
        for candidate in (folder / course.LECTURES, folder):
            if course.course_notebooks(candidate):
                return candidate
        raise course.CourseError(f"No lecture notebooks (NN_name.ipynb) in {folder} or {folder / course.LECTURES}. "
                                 f"Write the course there first: viztools course {folder}")
    candidates = [cwd / course.LECTURES, SOURCE_ROOT / course.LECTURES, cwd,
                  cwd / course.DEFAULT_FOLDER / course.LECTURES]
    for candidate in candidates:
        if (candidate / FIRST_LECTURE).is_file():
            return candidate
    return course.course_source() / course.LECTURES


def voila_command(notebook: Path, *, ip: str, port: int, open_browser: bool) -> list[str]:
    """The command line that serves ``notebook`` as an app with Voila (code hidden, widgets live). Progressive
    rendering shows the prose at once and each output as its cell finishes (lecture 03 on GlyphNet: text after
    4 s instead of 32 s), rather than a spinner until the whole notebook has run."""
    command = [sys.executable, "-m", "voila", str(notebook), f"--template={PRESENT_TEMPLATE}", "--theme=light",
               f"--Voila.ip={ip}", f"--port={port}", "--Voila.port_retries=0", "--Voila.auto_token=True",
               "--show_tracebacks=True", "--progressive_rendering=True"]
    if not open_browser:
        command.append("--no-browser")
    return command


def _present(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("voila") is None:
        raise RuntimeError("viztools present needs Voila, which is not installed: pip install 'voila>=0.5'")
    folder = lecture_folder(args.folder)
    notebook = course.find_lecture(args.lecture, course.course_notebooks(folder))
    port = args.port or free_port("127.0.0.1" if args.ip == "localhost" else args.ip)
    token = args.token or os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    open_browser = not args.no_browser and browser_available()
    command = voila_command(notebook, ip=args.ip, port=port, open_browser=open_browser)
    print(f"Presenting {notebook} with Voila: prose, figures and live widgets, without code. The page shows the "
          "text at once and each figure and widget as the lecture runs (a few seconds to a minute).")
    template_path = os.pathsep.join(filter(None, [str(PRESENT_TEMPLATE_ROOT), os.environ.get("JUPYTER_PATH")]))
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_PATH": template_path}
    return _serve("Voila", command, _url(args.ip, port, "", token), open_browser=open_browser, env=env,
                  cwd=notebook.parent)


# --------------------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------------------


def _server_options(parser: argparse.ArgumentParser, server: str) -> None:
    """--port, --ip, --token and --no-browser, shared by `viztools lab` and `viztools present`."""
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on (default: the first free one from {LAB_PORTS[0]})")
    parser.add_argument("--ip", default="localhost",
                        help="address to listen on (default: %(default)s; 0.0.0.0 to reach it from other machines)")
    parser.add_argument("--token", default=None,
                        help="access token in the URL (default: $JUPYTER_TOKEN, else a random one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser (the default where no desktop session is found)")


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

    course_parser = commands.add_parser(
        "course", help="write the lectures and exercises into a folder of your own (or bring them up to date)",
        description="Write the course's lecture and exercise notebooks into DIR (lectures/, exercises/, a "
        "README.md). Run it again after upgrading viztools: notebooks you did not change are refreshed, a lecture "
        "you edited is kept and the new version is written beside it (NN_name.vVERSION.ipynb), an exercise you "
        "worked on is never replaced. A manifest in DIR (.viztools-course.json) remembers what was written.")
    course_parser.add_argument("folder", nargs="?", type=Path, metavar="DIR",
                               help=f"the course folder (default: ./{course.DEFAULT_FOLDER})")
    course_parser.add_argument("--force", action="store_true",
                               help="also replace lectures you edited (your edits are lost; exercises are never "
                               "replaced)")
    course_parser.set_defaults(run=_course)

    lab = commands.add_parser(
        "lab", help="open the course in JupyterLab (prints the URL to open)",
        description="Start JupyterLab in DIR and open lecture 00 (in DIR or DIR/lectures). When DIR does not exist "
        "or holds no notebooks, the course is written there first (as by 'viztools course DIR'). Works as root "
        "(passes --allow-root) and on machines without a browser (prints the URL, with its access token, to open "
        "elsewhere). Stop it with Ctrl+C.")
    lab.add_argument("folder", nargs="?", type=Path, metavar="DIR",
                     help="folder to serve (default: the current folder if it is a course, else the lectures/ "
                     f"folder of a viztools clone, else ./{course.DEFAULT_FOLDER} (written if needed) unless the "
                     "current folder holds notebooks)")
    _server_options(lab, "JupyterLab")
    lab.set_defaults(run=_lab)

    present = commands.add_parser(
        "present", help="show one lecture as an app in the browser, for class (Voila: no code, live widgets)",
        description="Serve lecture NN with Voila: its prose shows at once, its figures and widgets as the "
        "notebook runs top to bottom, no code cell is shown, and the widgets stay live. Works as root and on "
        "machines without a browser (prints the URL, with its access token). Stop it with Ctrl+C.")
    present.add_argument("lecture", metavar="NN", help="the lecture: its number (3 or 03) or part of its name "
                         "(occlusion)")
    present.add_argument("folder", nargs="?", type=Path, metavar="DIR",
                         help="the course folder or a folder of lectures (default: the course or clone in the "
                         f"current folder, ./{course.DEFAULT_FOLDER}, else the lectures viztools ships)")
    _server_options(present, "Voila")
    present.set_defaults(run=_present)

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
