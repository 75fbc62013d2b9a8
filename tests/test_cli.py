"""The `viztools` command: version, info, download errors."""

from __future__ import annotations

import subprocess
import sys

import viztools
from viztools import models
from viztools.cli import main


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
