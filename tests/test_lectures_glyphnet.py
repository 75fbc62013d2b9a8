"""Every lecture runs top to bottom as a student without ImageNet weights runs it: ``load_model("auto")`` finds no
weights and falls back to GlyphNet, the built-in model (the installed course's first experience).

CI runs the lectures with the shared ImageNet SqueezeNet weights (nbval) and on SqueezeNet 1.1 with random weights
(tests/test_lectures_any_weights.py); this is the third path through every "which model?" branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lecture_runs import LECTURE_IDS, LECTURES, run_lecture


@pytest.mark.slow
@pytest.mark.parametrize("lecture", LECTURES, ids=LECTURE_IDS)
def test_lecture_runs_on_glyphnet_without_imagenet_weights(
    lecture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights in a torch hub cache either
    printed = run_lecture(lecture, tmp_path, monkeypatch)
    assert "glyphnet" in printed.lower(), f"{lecture.name} should have printed the model it runs on (GlyphNet)"
