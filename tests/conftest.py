"""Shared fixtures: the built-in model, the shared ImageNet weights (skipped where absent), hook checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import viztools
from viztools.models import VizModel

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "squeezenet1_0_imagenet_fp16.pth"


def shared_weights_path() -> Path | None:
    """The ImageNet SqueezeNet 1.0 weights for tests: $VIZTOOLS_TEST_WEIGHTS, else ../shared/weights beside the repo."""
    candidate = Path(os.environ.get("VIZTOOLS_TEST_WEIGHTS", SHARED_WEIGHTS))
    return candidate if candidate.is_file() else None


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def glyphnet() -> VizModel:
    return viztools.load_model("glyphnet")


@pytest.fixture(scope="session")
def random_glyphnet() -> VizModel:
    """GlyphNet with random weights (seed 0), shared by every test: techniques must leave it as it was, which
    tests/test_hygiene.py checks for each of them. Tests that modify a model build their own."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return viztools.load_model("glyphnet", weights="random")


@pytest.fixture(scope="session")
def imagenet_squeezenet() -> VizModel:
    path = shared_weights_path()
    if path is None:
        pytest.skip(f"ImageNet SqueezeNet weights not found at {SHARED_WEIGHTS} (set VIZTOOLS_TEST_WEIGHTS)")
    return viztools.load_model("squeezenet1_0", weights=path)
