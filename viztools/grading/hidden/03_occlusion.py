"""Hidden checks of exercise 03 (occlusion): other sizes, seeds, fills and classes than the visible checks.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected maps here with
:func:`reference_map`, the grader's own naive occlusion loop (tested against ``viztools.occlusion.occlusion``).
"""

from __future__ import annotations

import math
import random

import torch

import viztools
from viztools.grading.checks import corner_model
from viztools.grading.proxy import Student, close, equal, model, reference_model, require
from viztools.occlusion import patch_starts

POSITIONS_HINT = ("Hint: start at 0, step by `stride` while the patch fits, and if the last patch does not end at "
                  "the border add one starting at `size - patch_size`.")
GLYPHNET = model("glyphnet")


def reference_map(network: viztools.VizModel, image: torch.Tensor, target: int, patch_size: int, stride: int,
                  fill: float = 0.5) -> torch.Tensor:
    """The occlusion map computed one position at a time in the grader (float64 comparison happens later)."""
    rows = patch_starts(image.shape[-2], patch_size, stride)
    cols = patch_starts(image.shape[-1], patch_size, stride)
    result = torch.zeros(len(rows), len(cols))
    with torch.no_grad():
        for i, top in enumerate(rows):
            for j, left in enumerate(cols):
                occluded = image.clone()
                occluded[:, :, top : top + patch_size, left : left + patch_size] = fill
                result[i, j] = torch.softmax(network(occluded), dim=1)[0, target]
    return result


def _glyph_image(rng: random.Random) -> tuple[torch.Tensor, int]:
    images, labels = viztools.make_glyphworld(1, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images, int(labels[0])


def check_positions(student: Student, rng: random.Random) -> list[str]:
    """Patch positions for sizes, patches and strides the visible check does not use."""
    cases = [(11, 11, 3), (13, 5, 4), (14, 5, 4)]
    for _ in range(4):
        size = rng.randrange(20, 200)
        patch = rng.randrange(2, size // 2)
        cases.append((size, patch, rng.randrange(1, patch + 4)))
    problems = []
    for size, patch, stride in cases:
        got = student.call("patch_positions", size, patch, stride).value
        problems += equal(f"patch_positions({size}, {patch}, {stride})", got, list(patch_starts(size, patch, stride)))
    return [*problems, POSITIONS_HINT] if problems else []


def check_naive_corner(student: Student, rng: random.Random) -> list[str]:
    """occlusion_naive on a corner model of another size, with the default fill, another fill and the other class."""
    corner, size = rng.choice([(2, 5), (3, 6), (3, 7)])
    network = corner_model(corner, size)
    spec = model("corner", corner=corner, size=size)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    image = torch.rand(1, 3, size, size, generator=generator)
    patch, stride, fill = rng.choice([2, 3]), rng.choice([1, 2]), rng.choice([0.0, 0.25, 0.75])
    default = student.call("occlusion_naive", spec, image, 0, patch, stride)
    problems = close(f"{patch}x{patch} grey patch, stride {stride}, on a {size}x{size} image", default.value,
                     reference_map(network, image, 0, patch, stride))
    problems += require("the input image is left unchanged", bool(default.tensor_args)
                        and torch.equal(default.tensor_args[0], image),
                        "your function changed the caller's image (work on `image.clone()`)")
    got = student.call("occlusion_naive", spec, image, 0, patch, stride, fill=fill).value
    problems += close(f"fill={fill}", got, reference_map(network, image, 0, patch, stride, fill))
    got = student.call("occlusion_naive", spec, image, 1, patch, stride).value
    problems += close("target=1, the other class", got, reference_map(network, image, 1, patch, stride))
    return problems


def check_naive_glyphnet(student: Student, rng: random.Random) -> list[str]:
    """occlusion_naive on GlyphNet and an unseen GlyphWorld image, for its class and another one."""
    network, (image, label) = reference_model(), _glyph_image(rng)
    patch, stride = rng.choice([(16, 8), (16, 12), (20, 11)])
    problems = []
    for target in (label, rng.choice([c for c in range(10) if c != label])):
        got = student.call("occlusion_naive", GLYPHNET, image, target, patch, stride).value
        problems += close(f"class {network.categories[target]!r}, {patch} px grey patch, stride {stride}", got,
                          reference_map(network, image, target, patch, stride))
    return problems


def check_naive_one_at_a_time(student: Student, rng: random.Random) -> list[str]:
    """occlusion_naive gives the right map with one occluded image per forward pass."""
    network, (image, label) = reference_model(), _glyph_image(rng)
    patch, stride = 32, rng.choice([11, 16])
    count = len(patch_starts(64, patch, stride)) ** 2
    returned = student.call("occlusion_naive", GLYPHNET, image, label, patch, stride, count_passes=True)
    problems = close("the map", returned.value, reference_map(network, image, label, patch, stride))
    sizes = returned.passes or []
    problems += require("one image per forward pass", set(sizes) <= {1}, f"batch sizes {sorted(set(sizes))}")
    problems += require(f"a forward pass for each of the {count} positions", len(sizes) >= count,
                        f"{len(sizes)} forward passes")
    return problems


def check_batched_values(student: Student, rng: random.Random) -> list[str]:
    """occlusion_batched gives the naive map for batch sizes that do and do not divide the positions."""
    network, (image, label) = reference_model(), _glyph_image(rng)
    patch, stride = rng.choice([(16, 8), (20, 11)])
    count = len(patch_starts(64, patch, stride)) ** 2
    expected = reference_map(network, image, label, patch, stride)
    problems = []
    for batch_size in sorted({1, rng.randrange(2, count), count, count + rng.randrange(1, 50)}):
        got = student.call("occlusion_batched", GLYPHNET, image, label, patch, stride, batch_size=batch_size).value
        problems += close(f"batch_size={batch_size} ({count} positions)", got, expected)
    black_stride = rng.choice([6, 9])
    got = student.call("occlusion_batched", GLYPHNET, image, label, 12, black_stride, fill=0.0).value
    problems += close(f"black 12 px patch, stride {black_stride}", got,
                      reference_map(network, image, label, 12, black_stride, 0.0))
    return problems


def check_batched_passes(student: Student, rng: random.Random) -> list[str]:
    """occlusion_batched gives the right map in few forward passes, none larger than batch_size."""
    network, (image, label) = reference_model(), _glyph_image(rng)
    batch_size = rng.randrange(9, 20)
    count = len(patch_starts(64, 16, 8)) ** 2
    returned = student.call("occlusion_batched", GLYPHNET, image, label, 16, 8, batch_size=batch_size,
                            count_passes=True)
    problems = close("the map", returned.value, reference_map(network, image, label, 16, 8))
    sizes = returned.passes or []
    largest, most = max(sizes, default=0), math.ceil(count / batch_size) + 1
    problems += require(f"no batch larger than batch_size={batch_size}", largest <= batch_size,
                        f"the largest batch had {largest} images")
    problems += require(f"at most {most} forward passes for {count} positions", 1 <= len(sizes) <= most,
                        f"{len(sizes)} forward passes")
    return problems
