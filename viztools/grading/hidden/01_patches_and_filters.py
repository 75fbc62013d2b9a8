"""Hidden checks of exercise 01 (patches and filters): other layer lists, units, activations and images.

The expected values come from :func:`reference_box` (the receptive-field rule, itself checked against
``viztools.hooks.receptive_field`` on GlyphNet) and from ``viztools.patches.top_activating_patches``. When a
wrong answer matches a known mistake (a kernel of ``k`` instead of ``k - 1``, padding ignored, an inclusive end,
rows and columns swapped, the k largest units instead of one per image), the feedback names it.
"""

from __future__ import annotations

import random

import torch

import viztools
from viztools.grading.proxy import Student, close, equal, reference_model
from viztools.hooks import receptive_field
from viztools.patches import top_activating_patches

GLYPHNET = [(7, 1, 3), (2, 2, 0), (3, 1, 1), (2, 2, 0), (3, 1, 1), (2, 2, 0), (3, 1, 1), (2, 2, 0)]
LAYER_NAMES = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]
SIZE_HINT = ("Hint: start with size = jump = 1; for each layer add (kernel - 1) x jump, then multiply the jump by "
             "the stride.")
BOX_HINT = ("Hint: follow the first unit up: start -= padding x jump (the jump of the layer below), size += "
            "(kernel - 1) x jump, then jump *= stride; unit r starts at start + r x jump, covers `size` pixels, and "
            "the box is clipped to [0, image_size].")
UNITS_HINT = ("Hint: for each image take the maximum of the channel's H x W map and its position (row = flat // W, "
              "col = flat % W), then keep the k images with the largest maxima, largest first.")


# ----------------------------------------------------------------------------------------------------------------
# The rule, and the mistakes it is easy to make
# ----------------------------------------------------------------------------------------------------------------


def reference_size(layers: list, mistake: str | None = None) -> list[int]:
    size, jump = 1, 1
    for kernel, stride, padding in layers:
        if mistake == "jump-first":
            jump *= stride
        size += {"kernel": kernel, "padding": kernel - 1 + 2 * padding}.get(mistake, kernel - 1) * jump
        if mistake != "jump-first":
            jump *= stride
    return [size, jump]


SIZE_MISTAKES = {
    "kernel": "your numbers match `size += kernel x jump`: a layer adds (kernel - 1) x jump pixels (a 1x1 kernel "
              "adds nothing).",
    "jump-first": "your numbers match multiplying the jump by the stride before adding: the kernel spans units of "
                  "the layer below, so add (kernel - 1) x the old jump, then update the jump.",
    "padding": "your numbers match counting the padding in the size: padding moves the field, it does not "
               "enlarge it.",
}


def reference_box(layers: list, row: int, col: int, image_size: int, mistake: str | None = None) -> list[int]:
    size, jump, start = 1, 1, 0
    for kernel, stride, padding in layers:
        size += (kernel - 1) * jump
        if mistake == "new-jump":
            jump *= stride
        if mistake != "no-padding":
            start -= padding * jump
        if mistake != "new-jump":
            jump *= stride
    if mistake == "swapped":
        row, col = col, row
    top, left = start + row * jump, start + col * jump
    end = size - 1 if mistake == "inclusive" else size
    if mistake == "unclipped":
        return [top, top + end, left, left + end]
    return [max(top, 0), min(top + end, image_size), max(left, 0), min(left + end, image_size)]


BOX_MISTAKES = {
    "no-padding": "your boxes match ignoring the padding: each padded layer moves the field padding x jump pixels "
                  "up and to the left.",
    "new-jump": "your boxes match moving the start by padding x the jump *after* the stride: use the jump of the "
                "layer below, as for the size.",
    "inclusive": "your boxes are one pixel short: bottom and right are exclusive (top + size), as in Python slices.",
    "unclipped": "your boxes are not clipped to the image: use max(top, 0) and min(top + size, image_size).",
    "swapped": "your boxes match rows and columns swapped: `row` moves the top, `col` moves the left.",
}


def _named_mistakes(got: object, answers: dict[str, object], messages: dict[str, str]) -> list[str]:
    normalized = list(got) if isinstance(got, (tuple, list)) else got
    return [messages[name] for name, answer in answers.items() if normalized == answer]


def output_size(layers: list, image_size: int) -> int:
    for kernel, stride, padding in layers:
        image_size = (image_size + 2 * padding - kernel) // stride + 1
    return image_size


def random_layers(rng: random.Random, count: int) -> list[tuple[int, int, int]]:
    layers = []
    for _ in range(count):
        kernel = rng.choice([1, 2, 3, 3, 5, 7])
        stride = rng.choice([1, 2, 2, 3]) if kernel > 1 else 1
        layers.append((kernel, stride, rng.randrange(0, kernel // 2 + 1)))
    if all(stride == 1 for _, stride, _ in layers[:-1]) or all(padding == 0 for *_, padding in layers):
        layers.insert(0, (3, 2, 1))  # a stride and a padding below the top layer, so every mistake shows
    return layers


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------


def check_field_size(student: Student, rng: random.Random) -> list[str]:
    """field_size_and_jump on layer lists the visible check does not use (strides and paddings everywhere)."""
    cases = [[(5, 2, 2), (3, 2, 1), (3, 1, 1)], [(1, 1, 0), (3, 3, 0), (2, 2, 0)]]
    cases += [random_layers(rng, rng.randrange(2, 7)) for _ in range(4)]
    problems, mistakes = [], []
    for layers in cases:
        got = student.call("field_size_and_jump", layers).value
        problem = equal(f"field_size_and_jump({layers})", got, reference_size(layers))
        if problem:
            problems += problem
            mistakes += _named_mistakes(got, {m: reference_size(layers, m) for m in SIZE_MISTAKES}, SIZE_MISTAKES)
    if not problems:
        return []
    return [*problems, *dict.fromkeys(mistakes), SIZE_HINT]


def check_unit_box(student: Student, rng: random.Random) -> list[str]:
    """unit_box on random networks and units (border and inner units), and on GlyphNet against the measured field."""
    problems, mistakes = [], []

    def compare(layers: list, row: int, col: int, size: int, expected: list[int]) -> None:
        got = student.call("unit_box", layers, row, col, size).value
        problem = equal(f"unit_box({layers}, {row}, {col}, {size})", got, expected)
        if problem:
            problems.extend(problem)
            answers = {m: reference_box(layers, row, col, size, m) for m in BOX_MISTAKES}
            mistakes.extend(_named_mistakes(got, {m: a for m, a in answers.items() if a != expected}, BOX_MISTAKES))

    for _ in range(4):
        layers = random_layers(rng, rng.randrange(2, 5))
        size = rng.randrange(40, 120)
        units = output_size(layers, size)
        if units < 2:
            continue
        row = rng.randrange(0, units)
        col = rng.choice([c for c in range(units) if c != row])
        for r, c in [(row, col), (units - 1, 0)]:
            compare(layers, r, c, size, reference_box(layers, r, c, size))
    for _ in range(3):
        depth = rng.randrange(2, 9)
        name = LAYER_NAMES[depth - 1]
        units = output_size(GLYPHNET[:depth], 64)
        row = rng.randrange(units)
        col = rng.choice([c for c in range(units) if c != row] or [row])
        rows, cols = receptive_field(reference_model(), name, (row, col))
        compare(GLYPHNET[:depth], row, col, 64, [rows.start, rows.stop, cols.start, cols.stop])
    if not problems:
        return []
    return [*problems[:6], *dict.fromkeys(mistakes), BOX_HINT]


def reference_units(activations: torch.Tensor, channel: int, k: int) -> tuple[torch.Tensor, ...]:
    maps = activations[:, channel]
    best, flat = maps.flatten(1).max(dim=1)
    values, images = best.topk(k)
    return values, images, flat[images] // maps.shape[2], flat[images] % maps.shape[2]


def _int_list(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()] if value.dim() <= 1 else value
    if isinstance(value, (list, tuple)):
        return [int(v) if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1) else v
                for v in value]
    return value


def check_strongest_units(student: Student, rng: random.Random) -> list[str]:
    """strongest_units on random activations with non-square maps; the best image also holds the batch's runner-up."""
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    count, channels = rng.randrange(20, 40), rng.randrange(3, 7)
    height, width = rng.choice([(3, 5), (4, 7), (6, 4), (5, 9)])
    channel, k = rng.randrange(channels), rng.randrange(3, 7)
    activations = torch.randn(count, channels, height, width, generator=generator)
    best = rng.randrange(count)
    activations[best, channel].view(-1)[rng.randrange(height * width)] = 10.0  # the largest unit of the batch
    others = [i for i in range(height * width) if activations[best, channel].view(-1)[i] != 10.0]
    activations[best, channel].view(-1)[rng.choice(others)] = 9.0  # the second largest: in the same image
    got = student.call("strongest_units", activations, channel, k).value
    if not isinstance(got, list) or len(got) != 4:
        return [f"strongest_units: expected (values, image_indices, rows, cols), got a {type(got).__name__}"
                + (f" of length {len(got)}" if isinstance(got, list) else ""), UNITS_HINT]
    values, images, rows, cols = reference_units(activations, channel, k)
    what = f"{count} images, {channels} channels of {height}x{width} maps, channel {channel}, k={k}"
    problems = close(f"values ({what})", got[0], values)
    problems += equal("image indices", _int_list(got[1]), images.tolist())
    problems += equal("rows", _int_list(got[2]), rows.tolist())
    problems += equal("cols", _int_list(got[3]), cols.tolist())
    if not problems:
        return []
    got_images = _int_list(got[1])
    if isinstance(got_images, list) and len(set(got_images)) < len(got_images):
        problems.append("an image appears more than once: take each image's strongest unit first, then the k best "
                        "images (not the k largest units of the whole batch).")
    flat = activations[:, channel].flatten(1).max(dim=1).indices[images]
    if (flat // height).tolist() != rows.tolist() and _int_list(got[2]) == (flat // height).tolist():
        problems.append(f"rows and columns are mixed up: with {width} columns, flat index i is row i // {width}, "
                        f"column i % {width}.")
    weakest = activations[:, channel].flatten(1).max(dim=1).values.topk(k, largest=False).indices.tolist()
    if isinstance(got_images, list) and sorted(got_images) == sorted(weakest):
        problems.append("these are the weakest images: sort the maxima largest first.")
    return [*problems, UNITS_HINT]


def _compare_patches(what: str, got: object, expected: list[torch.Tensor]) -> list[str]:
    if not isinstance(got, list) or len(got) != len(expected):
        return [f"{what}: expected a list of {len(expected)} patches, got "
                + (f"{len(got)} patches" if isinstance(got, list) else f"a {type(got).__name__}")]
    problems = []
    for rank, (patch, reference) in enumerate(zip(got, expected, strict=True)):
        problems += close(f"{what}, patch {rank}", patch, reference)
    return problems[:3]


def check_top_patches(student: Student, rng: random.Random) -> list[str]:
    """top_patches on unseen GlyphWorld images (a random layer and channel of GlyphNet) and on a random network."""
    network = reference_model()
    images, _ = viztools.make_glyphworld(rng.randrange(40, 60), seed=rng.randrange(10, 10_000))
    k, depths = rng.randrange(4, 7), [1, 3, 4, 5, 7]
    rng.shuffle(depths)
    for depth in depths:  # a layer with a channel whose top images are clear (positive, no ties)
        name = LAYER_NAMES[depth - 1]
        activations = viztools.get_activations(network, images, [name])[name]
        top = activations.flatten(2).max(dim=2).values.topk(k + 1, dim=0).values  # (k + 1, C)
        usable = [c for c in range(top.shape[1])
                  if bool((top[:, c] > 0).all()) and len(set(top[:, c].tolist())) == k + 1]
        if usable:
            break
    channel = rng.choice(usable)
    expected = top_activating_patches(network, images, layer=name, channel=channel, k=k).patches
    got = student.call("top_patches", images, activations, channel, k, GLYPHNET[:depth]).value
    problems = _compare_patches(f"GlyphNet {name}, channel {channel}, k={k}", got, expected)

    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    layers, size = [(5, 2, 2), (3, 1, 1), (2, 2, 0)], rng.randrange(30, 50)
    units = output_size(layers, size)
    pixels = torch.rand(25, 3, size, size, generator=generator)
    fake = torch.randn(25, 4, units, units, generator=generator)
    channel, k = rng.randrange(4), rng.randrange(3, 6)
    _, indices, rows, cols = reference_units(fake, channel, k)
    expected = []
    for n, row, col in zip(indices.tolist(), rows.tolist(), cols.tolist(), strict=True):
        top_, bottom, left, right = reference_box(layers, row, col, size)
        expected.append(pixels[n, :, top_:bottom, left:right])
    got = student.call("top_patches", pixels, fake, channel, k, layers).value
    problems += _compare_patches(f"random {size}x{size} images, layers {layers}, channel {channel}, k={k}", got,
                                 expected)
    if not problems:
        return []
    return [*problems, "Hint: take (values, image_indices, rows, cols) from strongest_units, and crop each image "
                       "n to unit_box(layers, row, col, image size): images[n, :, top:bottom, left:right]."]
