"""Every lecture runs top to bottom on another architecture with untrained weights: SqueezeNet 1.1 (3x3 first
layer, other pooling positions) with seeded random weights, picked by ``load_model("auto")`` from
``$VIZTOOLS_WEIGHTS_DIR`` as a real weights file would be.

CI runs the lectures with the shared SqueezeNet 1.0 ImageNet weights; this catches what those runs cannot: layer
names, channel numbers, filter sizes or shapes hard-coded for SqueezeNet 1.0, and asserts that only hold for
trained weights without a guard (``model.weights_source != "random"``). The text of a lecture may then be wrong;
nothing may fail. tests/test_lectures_glyphnet.py runs them as a student without ImageNet weights does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from lecture_runs import LECTURE_IDS, LECTURES, run_lecture

# Injected before a lecture's first cell. load_model records a weights file's path as its source; this file holds
# random weights, so models loaded from it say "random", as load_model(..., weights="random") does.
SAY_RANDOM = """\
import viztools.models

_post_init = viztools.models.VizModel.__post_init__


def _random_weights_say_so(self):
    _post_init(self)
    if self.weights_source == {path!r}:
        self.weights_source = "random"


viztools.models.VizModel.__post_init__ = _random_weights_say_so
assert viztools.models.find_local_weights("squeezenet1_1") == viztools.models.Path({path!r})
"""


@pytest.fixture(scope="module")
def random_squeezenet1_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random state_dict of torchvision's SqueezeNet 1.1, named as load_model("auto") looks for it."""
    path = tmp_path_factory.mktemp("weights") / "squeezenet1_1.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("lecture", LECTURES, ids=LECTURE_IDS)
def test_lecture_runs_on_squeezenet1_1_with_random_weights(
    lecture: Path, random_squeezenet1_1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed = run_lecture(lecture, random_squeezenet1_1.parent, monkeypatch,
                          first_cell=SAY_RANDOM.format(path=str(random_squeezenet1_1)))
    assert "squeezenet1_1" in printed, f"{lecture.name} should have printed the model it runs on (squeezenet1_1)"
