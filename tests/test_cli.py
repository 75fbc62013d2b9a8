"""The `viztools` command: version, info, download errors, help texts, lazy imports, `viztools lab`'s set-up."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest

import viztools
from viztools import cli, models
from viztools.cli import build_parser, main


def test_version_via_the_installed_entry_point():
    result = subprocess.run([sys.executable, "-m", "viztools", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"viztools {viztools.__version__}"


def test_info_lists_every_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in models.MODEL_NAMES:
        assert name in out
    assert "glyphnet       yes" in out
    assert "squeezenet1_1  no" in out
    assert "load_model('auto') would use:" in out


def test_download_offline_says_how_to_get_weights(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, "")
    monkeypatch.setattr(models.torch.hub, "get_dir", lambda: str(tmp_path))
    assert main(["download", "vgg16"]) == 2
    assert "VIZTOOLS_WEIGHTS_DIR" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "train-glyphnet" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# Lazy imports: the command and `import viztools` start without torch
# --------------------------------------------------------------------------------------------------------------

#: Modules that only the subcommands (or the first use of a library name) may import.
HEAVY_MODULES = ("torch", "torchvision", "sklearn", "matplotlib", "nbformat", "pytest")
IMPORTED_HEAVY_MODULES = f"import sys; print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"


def _heavy_modules_after(code: str) -> str:
    """The heavy modules a fresh interpreter has imported after running ``code`` (the printed list)."""
    result = subprocess.run([sys.executable, "-c", f"{code}\n{IMPORTED_HEAVY_MODULES}"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_import_viztools_imports_no_heavy_module():
    assert _heavy_modules_after("import viztools") == "[]"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["lab", "--help"], ["course", "--help"],
                                  ["present", "--help"]], ids=" ".join)
def test_command_line_help_and_version_import_no_heavy_module(argv):
    code = f"from viztools.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _heavy_modules_after(code) == "[]"


def test_every_exported_name_resolves():
    missing = [name for name in viztools.__all__ if getattr(viztools, name, None) is None]
    assert not missing
    assert set(viztools.__all__) <= set(dir(viztools))
    assert {"occlusion", "saliency", "widgets", "grading"} <= set(dir(viztools))
    assert viztools.GLYPHWORLD_CLASSES is __import__("viztools.glyphworld").glyphworld.CLASS_NAMES


def test_submodules_and_from_imports_work():
    from viztools import load_model, occlusion_coarse_to_fine

    assert load_model is models.load_model
    assert occlusion_coarse_to_fine.__module__ == "viztools.occlusion"
    assert callable(viztools.occlusion.occlusion) and callable(viztools.saliency.saliency)
    with pytest.raises(AttributeError, match="no_such_name"):
        viztools.no_such_name  # noqa: B018


# --------------------------------------------------------------------------------------------------------------
# Help texts read well in a terminal
# --------------------------------------------------------------------------------------------------------------


def _every_help_text() -> dict[str, str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"viztools": parser.format_help(), **{name: sub.format_help() for name, sub in subparsers.choices.items()}}


def test_help_texts_have_no_markup():
    texts = _every_help_text()
    assert {"info", "download", "train-glyphnet", "course", "lab", "present", "build-exercises", "grade"} <= set(texts)
    for command, text in texts.items():
        for markup in ("``", ":func:", ":mod:", ":class:"):
            assert markup not in text, f"'{command} --help' shows {markup}:\n{text}"


def test_help_shows_the_real_defaults():
    from viztools.grading.grade import DEFAULT_CELL_TIMEOUT

    texts = _every_help_text()
    assert f"(default: {DEFAULT_CELL_TIMEOUT:g})" in texts["grade"]
    for name in models.MODEL_NAMES[1:]:
        assert name in texts["download"]


# --------------------------------------------------------------------------------------------------------------
# viztools lab (the server itself is started in test_lab.py)
# --------------------------------------------------------------------------------------------------------------


def test_lab_runs_as_root_only_with_allow_root(tmp_path):
    for as_root in (True, False):
        command = cli.jupyter_lab_command(tmp_path, ip="localhost", port=8899, open_browser=True, as_root=as_root)
        assert ("--allow-root" in command) == as_root
        assert "--no-browser" not in command and "--ServerApp.port=8899" in command


def test_lab_opens_the_first_lecture_when_the_folder_has_it(tmp_path):
    command = cli.jupyter_lab_command(tmp_path, ip="localhost", port=8899, open_browser=False, as_root=False)
    assert str(tmp_path) in command and "--no-browser" in command
    assert cli.lab_url("localhost", 8899, "abc", tmp_path) == "http://localhost:8899/lab?token=abc"
    (tmp_path / cli.FIRST_LECTURE).write_text("{}", encoding="utf-8")
    command = cli.jupyter_lab_command(tmp_path, ip="localhost", port=8899, open_browser=False, as_root=False)
    assert str(tmp_path / cli.FIRST_LECTURE) in command
    assert cli.lab_url("localhost", 8899, "abc", tmp_path) == (
        f"http://localhost:8899/lab/tree/{cli.FIRST_LECTURE}?token=abc")


def test_lab_default_folder(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    monkeypatch.setattr(cli, "SOURCE_ROOT", clone)
    assert cli.default_lab_folder(tmp_path) == tmp_path / "viztools-course"  # no clone anywhere: the course
    (clone / "lectures").mkdir(parents=True)
    (clone / "lectures" / cli.FIRST_LECTURE).write_text("{}", encoding="utf-8")
    assert cli.default_lab_folder(tmp_path) == clone / "lectures"  # the clone viztools is installed from
    (tmp_path / "lectures").mkdir()
    (tmp_path / "lectures" / cli.FIRST_LECTURE).write_text("{}", encoding="utf-8")
    assert cli.default_lab_folder(tmp_path) == tmp_path / "lectures"  # the clone we are in


def test_lab_opens_a_browser_only_where_there_is_one(monkeypatch):
    for variable in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert not cli.browser_available()
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli.browser_available()


def test_lab_skips_ports_in_use():
    with socket.socket() as busy, socket.socket() as other:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        other.bind(("127.0.0.1", 0))
        free = other.getsockname()[1]
        other.close()
        assert cli.free_port("127.0.0.1", [busy.getsockname()[1], free]) == free
        with pytest.raises(RuntimeError, match="--port"):
            cli.free_port("127.0.0.1", [busy.getsockname()[1]])


def test_lab_refuses_a_file(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("")
    assert main(["lab", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
