"""Every public technique leaves the model as it found it, after a successful call and after a call that raised.

One parametrized test replaces the per-file copies of these checks (CONTRIBUTING.md, "Hooks"): no hook remains on
any module, the torch function-mode (and dispatch-mode) stack is empty, weights, ``requires_grad``, eval mode and the
out-of-place ReLUs are unchanged, the model's plain input gradients are bit-for-bit the same as before, and the
images passed in are unchanged.

A technique is made to fail from inside: its first convolution raises on the n-th forward call made while the
technique's instrument is in place (its hooks, a ReLU-rule or graph-recording mode, or nothing for techniques that
need neither; each case names it, and the test fails if that phase never comes), and, for techniques that take
``should_stop=``, the callback raises after the first unit of work.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

import viztools
from viztools import (
    adversarial,
    class_visualization,
    deepdream,
    embeddings,
    filters,
    grad_cam,
    integrated_gradients,
    inversion,
    occlusion,
    patches,
    saliency,
    smooth_grad,
    style,
)
from viztools.hooks import has_hooks
from viztools.models import VizModel

SIZE = 64  # GlyphNet's input size
Stop = Callable[[object], object] | None


class InjectedFailure(Exception):  # noqa: N818 - not an error of the code under test: the failure the test injects
    """Raised from inside a technique by the test (not a RuntimeError, so no technique can mistake it for its own)."""


def pixels(seed: int, count: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def live(run: viztools.optimize.Run, records: int = 2) -> object:
    """Iterate a live run for a few records, then stop it and take its result (what a widget does)."""
    list(itertools.islice(run, records))
    run.stop()
    return run.result()


@dataclass(frozen=True)
class Case:
    """One public entry point: ``call(model, should_stop)`` runs it briefly on GlyphNet at 64 px.

    ``fail_at``: which forward call of the first convolution made with ``active`` in place raises. ``active``: what
    the technique has in place then ("hooks", "mode" or "nothing" for techniques that need neither).
    ``stoppable``: takes ``should_stop=`` (the callback is then also made to raise).
    """

    name: str
    call: Callable[[VizModel, Stop], object]
    fail_at: int
    active: str
    stoppable: bool = False


IMAGE, OTHER = pixels(1), pixels(2)
IMAGES = pixels(3, count=6)
INPUTS = {"image": IMAGE, "second image": OTHER, "image batch": IMAGES}


def stop_kw(should_stop: Stop) -> dict:
    return {} if should_stop is None else {"should_stop": should_stop}


CASES = [
    Case("patches.top_activating_patches", lambda m, s: patches.top_activating_patches(
        m, IMAGES, layer="conv3", channel=1, k=2, batch_size=2), fail_at=2, active="hooks"),
    Case("patches.top_activating_patches_grid", lambda m, s: patches.top_activating_patches_grid(
        m, IMAGES, layer="conv2", channels=[0, 3], k=2, batch_size=2), fail_at=2, active="hooks"),
    Case("filters.filter_grid", lambda m, s: (  # conv1: the weights only; pool3: a traced forward finds its conv
        filters.plot_filters(filters.filter_grid(m, layer="conv1")),
        filters.filter_grid(m, layer="pool3", normalize="global")),
        fail_at=1, active="hooks"),
    Case("embeddings.tsne_embedding", lambda m, s: embeddings.tsne_embedding(
        m, IMAGES, layer="conv3", perplexity=2, pca_dims=None, batch_size=2), fail_at=2, active="hooks"),
    Case("embeddings.layer_features", lambda m, s: embeddings.layer_features(
        m, IMAGES, layer="pool3", batch_size=2), fail_at=2, active="hooks"),
    *[
        Case(f"occlusion.occlusion[{method}]", lambda m, s, method=method: occlusion.occlusion(
            m, IMAGE, 3, patch_size=16, stride=16, batch_size=4, method=method, **stop_kw(s)),
            fail_at=fail_at, active=active, stoppable=True)
        for method, fail_at, active in [("naive", 6, "nothing"), ("batched", 1, "mode"), ("incremental", 1, "mode")]
    ],
    Case("occlusion.occlusion_coarse_to_fine", lambda m, s: list(occlusion.occlusion_coarse_to_fine(
        m, IMAGE, 3, patch_size=16, stride=8, coarse_stride=16, batch_size=4, method="incremental", **stop_kw(s))),
        fail_at=2, active="mode", stoppable=True),  # the fine pass's recording
    Case("saliency.saliency", lambda m, s: saliency.saliency(m, IMAGE, 3), fail_at=1, active="nothing"),
    *[
        Case(f"saliency.input_gradient[{rule}]", lambda m, s, rule=rule: saliency.input_gradient(
            m, IMAGE, 3, rule=rule), fail_at=1, active="nothing" if rule == "plain" else "mode")
        for rule in ("plain", "guided")
    ],
    Case("saliency.guided_backprop", lambda m, s: saliency.guided_backprop(m, IMAGE, 3), fail_at=1, active="mode"),
    Case("saliency.deconvnet", lambda m, s: saliency.deconvnet(m, IMAGE), fail_at=1, active="mode"),
    *[
        Case(f"saliency.neuron_gradient[{rule}]", lambda m, s, rule=rule: saliency.neuron_gradient(
            m, IMAGE, layer="conv3", channel=2, rule=rule), fail_at=1, active="hooks" if rule == "plain" else "mode")
        for rule in ("plain", "guided", "deconvnet")
    ],
    Case("grad_cam.grad_cam", lambda m, s: grad_cam.grad_cam(m, IMAGE, 3), fail_at=2,
         active="hooks"),  # the first forward with hooks finds the default layer
    *[
        Case(f"smooth_grad.smooth_grad[{rule}]", lambda m, s, rule=rule: smooth_grad.smooth_grad(
            m, IMAGE, 3, samples=4, batch_size=2, rule=rule), fail_at=fail_at, active=active)
        for rule, fail_at, active in [("plain", 2, "nothing"), ("guided", 2, "mode")]  # the second batch
    ],
    Case("integrated_gradients.integrated_gradients", lambda m, s: integrated_gradients.integrated_gradients(
        m, IMAGE, 3, steps=4, batch_size=2), fail_at=2, active="nothing"),  # the second batch of path points
    Case("class_visualization.class_visualization", lambda m, s: class_visualization.class_visualization(
        m, target=1, steps=4, blur_every=2, **stop_kw(s)), fail_at=3, active="nothing", stoppable=True),
    Case("class_visualization.class_visualization_optimization", lambda m, s: live(
        class_visualization.class_visualization_optimization(m, IMAGE, 1, steps=4, **stop_kw(s))),
        fail_at=3, active="nothing", stoppable=True),
    Case("inversion.invert_features", lambda m, s: inversion.invert_features(
        m, IMAGE, layer="conv3", steps=4, **stop_kw(s)), fail_at=3, active="hooks", stoppable=True),
    Case("inversion.invert_features_optimization", lambda m, s: live(inversion.invert_features_optimization(
        m, IMAGE, layer="conv3", steps=4, **stop_kw(s))), fail_at=3, active="hooks", stoppable=True),
    Case("deepdream.deepdream", lambda m, s: deepdream.deepdream(
        m, IMAGE, layer="conv3", steps=2, octaves=2, **stop_kw(s)), fail_at=3, active="hooks", stoppable=True),
    Case("deepdream.deepdream_optimization", lambda m, s: live(deepdream.deepdream_optimization(
        m, IMAGE, layer="conv3", steps=2, octaves=2, **stop_kw(s)), records=3), fail_at=3, active="hooks",
        stoppable=True),
    *[
        Case(f"style.style_transfer[{optimizer}]", lambda m, s, optimizer=optimizer: style.style_transfer(
            m, IMAGE, OTHER, content_layer="conv3", style_layers=["conv1", "conv2"], optimizer=optimizer, steps=3,
            **stop_kw(s)), fail_at=4, active="hooks", stoppable=True)
        for optimizer in ("lbfgs", "adam")
    ],
    Case("style.style_transfer_optimization", lambda m, s: live(style.style_transfer_optimization(
        m, IMAGE, OTHER, content_layer="conv3", style_layers=["conv1", "conv2"], steps=3, **stop_kw(s))),
        fail_at=4, active="hooks", stoppable=True),
    Case("adversarial.fooling_image", lambda m, s: adversarial.fooling_image(
        m, IMAGE, 1, max_steps=4, **stop_kw(s)), fail_at=3, active="nothing", stoppable=True),
    Case("adversarial.fooling_image_optimization", lambda m, s: live(adversarial.fooling_image_optimization(
        m, IMAGE, 1, max_steps=4, **stop_kw(s))), fail_at=3, active="nothing", stoppable=True),
    Case("adversarial.unrecognizable_image", lambda m, s: adversarial.unrecognizable_image(
        m, target=1, max_steps=4, **stop_kw(s)), fail_at=3, active="nothing", stoppable=True),
    Case("adversarial.unrecognizable_image_optimization", lambda m, s: live(
        adversarial.unrecognizable_image_optimization(m, None, 1, max_steps=4, **stop_kw(s))),
        fail_at=3, active="nothing", stoppable=True),
    Case("adversarial.fgsm", lambda m, s: adversarial.fgsm(m, IMAGE, epsilon=0.03), fail_at=1, active="nothing"),
    Case("adversarial.iterative_fgsm", lambda m, s: adversarial.iterative_fgsm(
        m, IMAGE, 1, epsilon=0.03, steps=3, targeted=True), fail_at=2, active="nothing"),
]


# --------------------------------------------------------------------------------------------------------------
# What "left as it was" means
# --------------------------------------------------------------------------------------------------------------


def plain_input_gradients(model: VizModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of every logit (weighted), through ``model(...)`` and straight through ``model.network``."""
    probe = pixels(7, count=2)
    weights = torch.linspace(-1.0, 1.0, len(model.categories))
    through_model = probe.clone().requires_grad_(True)
    (model(through_model) * weights).sum().backward()
    raw = probe.clone().requires_grad_(True)
    (model.network(model.normalize(raw)) * weights).sum().backward()
    return through_model.grad, raw.grad


@dataclass
class Snapshot:
    state: dict[str, torch.Tensor]
    gradients: tuple[torch.Tensor, torch.Tensor]
    inputs: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: VizModel) -> Snapshot:
        state = {k: v.detach().clone() for k, v in model.network.state_dict().items()}
        return cls(state, plain_input_gradients(model), {name: t.clone() for name, t in INPUTS.items()})


def assert_left_as_it_was(model: VizModel, before: Snapshot, when: str) -> None:
    network = model.network
    hooked = [name or "<network>" for name, m in network.named_modules()
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks]
    assert not has_hooks(network), f"{when}: hooks remain on {hooked}"
    assert _get_current_function_mode_stack() == [], f"{when}: torch function modes remain active"
    assert torch._C._len_torch_function_stack() == 0, f"{when}: the torch function-mode stack is not empty"
    assert _get_current_dispatch_mode_stack() == [], f"{when}: torch dispatch modes remain active"
    assert torch.is_grad_enabled(), f"{when}: gradients were left disabled"
    training = [name or "<network>" for name, m in network.named_modules() if m.training]
    assert not training, f"{when}: modules left in training mode: {training}"
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    assert not trainable, f"{when}: parameters left with requires_grad=True: {trainable}"
    inplace = [name for name, m in network.named_modules() if getattr(m, "inplace", False)]
    assert not inplace, f"{when}: in-place modules came back: {inplace}"
    state = network.state_dict()
    assert state.keys() == before.state.keys(), f"{when}: the state_dict's entries changed"
    changed = [k for k, v in state.items() if not torch.equal(v, before.state[k])]
    assert not changed, f"{when}: weights or buffers changed: {changed}"
    after = plain_input_gradients(model)
    for path, old, new in zip(("model(pixels)", "model.network"), before.gradients, after, strict=True):
        assert torch.equal(new, old), f"{when}: the plain input gradient through {path} changed"
    for name, tensor in INPUTS.items():
        assert torch.equal(tensor, before.inputs[name]), f"{when}: the {name} passed in was modified"
        assert not tensor.requires_grad, f"{when}: the {name} passed in was left with requires_grad=True"


@dataclass
class Failure:
    seen: list[str] = field(default_factory=list)  # what was in place at each forward call of the first conv
    raised: bool = False


def in_place(model: VizModel) -> str:
    if torch._C._len_torch_function_stack() or _get_current_dispatch_mode_stack():
        return "mode"
    return "hooks" if has_hooks(model.network) else "nothing"


@contextmanager
def failing_forward(model: VizModel, at: int, active: str) -> Iterator[Failure]:
    """The first convolution raises InjectedFailure on its ``at``-th forward call made with ``active`` in place.

    Only calls with the expected instrument in place count, so a technique's set-up passes (validation, the target's
    prediction) can change without moving the failure out of the phase under test. ``Conv2d.forward`` is wrapped
    for the ``with`` block (no hook, no instance attribute that a technique's ``copy.deepcopy`` of the network could
    carry away); only calls on this model's own module count.
    """
    conv = next(m for m in model.network.modules() if isinstance(m, nn.Conv2d))
    failure = Failure()
    original = nn.Conv2d.forward

    def forward(self: nn.Conv2d, *args: object, **kwargs: object) -> object:
        if self is conv:
            failure.seen.append(in_place(model))
            if failure.seen.count(active) == at and failure.seen[-1] == active and not failure.raised:
                failure.raised = True
                raise InjectedFailure(f"forward call {len(failure.seen)} of the first convolution ({active} in place)")
        return original(self, *args, **kwargs)

    nn.Conv2d.forward = forward
    try:
        yield failure
    finally:
        nn.Conv2d.forward = original


def raise_on_second_call() -> Callable[[object], bool]:
    """A should_stop that raises on its second call: after the first step (or, for occlusion, the first batch)."""
    calls = []

    def should_stop(progress: object) -> bool:
        calls.append(progress)
        if len(calls) == 2:
            raise InjectedFailure("should_stop")
        return False

    return should_stop


# --------------------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------------------


PUBLIC_TECHNIQUES = {
    patches: ["top_activating_patches", "top_activating_patches_grid"],
    filters: ["filter_grid"],
    embeddings: ["tsne_embedding", "layer_features"],
    occlusion: ["occlusion", "occlusion_coarse_to_fine"],
    saliency: ["saliency", "guided_backprop", "deconvnet", "input_gradient", "neuron_gradient"],
    grad_cam: ["grad_cam"],
    smooth_grad: ["smooth_grad"],
    integrated_gradients: ["integrated_gradients"],
    class_visualization: ["class_visualization", "class_visualization_optimization"],
    inversion: ["invert_features", "invert_features_optimization"],
    deepdream: ["deepdream", "deepdream_optimization"],
    style: ["style_transfer", "style_transfer_optimization"],
    adversarial: ["fooling_image", "fooling_image_optimization", "fgsm", "iterative_fgsm", "unrecognizable_image",
                  "unrecognizable_image_optimization"],
}


def test_every_public_technique_has_a_case() -> None:
    """A renamed technique fails here; a new one must be added to PUBLIC_TECHNIQUES and CASES."""
    missing = [f"{module.__name__}.{name}" for module, names in PUBLIC_TECHNIQUES.items() for name in names
               if not callable(getattr(module, name, None))]
    assert not missing, f"no longer in viztools: {missing}; update PUBLIC_TECHNIQUES and CASES"
    expected = {f"{module.__name__.removeprefix('viztools.')}.{name}"
                for module, names in PUBLIC_TECHNIQUES.items() for name in names}
    assert {case.name.split("[")[0] for case in CASES} == expected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_technique_leaves_the_model_as_it_was(case: Case, random_glyphnet: VizModel) -> None:
    model = random_glyphnet
    before = Snapshot.of(model)
    assert_left_as_it_was(model, before, f"before {case.name} (another test left the shared model dirty)")

    case.call(model, None)
    assert_left_as_it_was(model, before, f"after {case.name} succeeded")

    propagated = False
    with failing_forward(model, case.fail_at, case.active) as failure:
        try:
            case.call(model, None)
        except InjectedFailure:
            propagated = True
    assert failure.raised, (
        f"{case.name}: expected {case.fail_at} forward calls with {case.active} in place; the first convolution's "
        f"calls had {failure.seen}"
    )
    assert propagated, f"{case.name} swallowed the error raised inside its forward pass"
    assert_left_as_it_was(model, before, f"after {case.name} raised inside a forward pass")

    if case.stoppable:
        with pytest.raises(InjectedFailure, match="should_stop"):
            case.call(model, raise_on_second_call())
        assert_left_as_it_was(model, before, f"after {case.name}'s should_stop raised")
