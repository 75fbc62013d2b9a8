"""Exact incremental inference: a network's outputs for many occluded copies of one image, computing only what changes.

Occlusion sensitivity (:mod:`viztools.occlusion`) runs the network once per patch position, each time on the same
image with one small square replaced. Most of that work repeats the clean forward pass: a convolution's output at
a position depends only on the inputs inside its kernel, so a patch changes each activation map only inside its
*cone of influence*, a window that grows layer by layer with the kernels, strides and padding (the receptive
field read backwards). This module computes the clean activations of every layer once and, for each patch,
recomputes only those windows (the idea of incremental inference for occlusion maps, e.g. Nakandala et al. 2019,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations"). The result is exact:
equal to full forward passes up to float rounding.

How. One clean forward pass is recorded with a thread-local ``TorchFunctionMode`` (so widgets computing in other
threads are unaffected): every torch call whose arguments derive from the image, with its clean output. Local
operations (convolution, max and average pooling, element-wise operations, channel concatenation, batch norm and
dropout in eval mode) are then computed on windows: the crop an operation reads is assembled from the clean map
and the recomputed window of the layer below. Global average pooling updates the clean sums with the window's
(summed-area tables). Once a window would cover more than ``MAX_WINDOW_FRACTION`` of its map, the occluded maps
are rebuilt at full size and the rest of the recorded calls run normally, batched.

Networks it cannot serve: a forward pass that reads activation values (data-dependent control flow), modifies
activations in place, or whose recording does not reproduce the network on two test patches (e.g. a batch size
baked into a ``.view``). :class:`IncrementalInference` then sets ``reason`` and the caller runs plain batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

#: A layer is recomputed on windows while its affected window covers at most this fraction of its map.
MAX_WINDOW_FRACTION = 0.85
_CHANNELS_LAST = torch.channels_last

Box = tuple[int, int, int, int]  # top, bottom, left, right of a patch in pixels (exclusive ends)
Span = tuple[int, int]  # positions [a, b) along one axis


class IncrementalInference:
    """Logits of copies of ``image`` with one box each replaced by ``fill``, recomputing only what each box changes.

    Args:
        network: the network (normalized images in, logits out); it is not modified.
        image: the clean normalized image ``(1, C, H, W)``.
        fill: what the boxes show, normalized, same shape as ``image``.
        boxes: every box ``(top, bottom, left, right)`` it will be asked about (the windows are sized for them).

    Attributes:
        reason: why it cannot serve this network (None when it can); the caller then runs plain batches.
        work_fraction: multiply-adds per occluded image as a fraction of a full forward pass (1.0 when it cannot
            serve the network).
        bytes_per_image: memory one occluded image takes in a call, for choosing batch sizes.
        forward_bytes_per_image: the same for a plain forward pass of the network (from the recording).
    """

    def __init__(self, network: nn.Module, image: torch.Tensor, fill: torch.Tensor, boxes: Sequence[Box]) -> None:
        boxes = [tuple(box) for box in boxes]
        if not boxes:
            raise ValueError("boxes must hold at least one (top, bottom, left, right) box.")
        with torch.inference_mode():
            program = _record(network, image)
            reference = None
            test_boxes = (boxes * 2)[:2]  # a batch of two catches batch sizes baked into the recording
            if program.problem is None:
                occluded = image.repeat(len(test_boxes), 1, 1, 1)
                for i, (top, bottom, left, right) in enumerate(test_boxes):
                    occluded[i, :, top:bottom, left:right] = fill[0, :, top:bottom, left:right]
                reference = network(occluded)
            self._plan = _IncrementalPlan.build(program, fill, boxes, test_boxes, reference)
        self._fill = fill
        self.reason: str | None = self._plan.reason
        self.work_fraction = self._plan.work_fraction if self.reason is None else 1.0
        self.bytes_per_image = self._plan.bytes_per_image
        self.forward_bytes_per_image = 2 * program.largest_bytes  # an activation and the next one

    def __call__(self, boxes: Sequence[Box]) -> torch.Tensor:
        """Logits ``(len(boxes), classes)``: ``boxes`` must be among those given when it was built."""
        if self.reason is not None:
            raise ValueError(f"Incremental inference cannot serve this network: {self.reason}.")
        with torch.inference_mode():
            return self._plan.run(self._fill, [tuple(box) for box in boxes])


# --------------------------------------------------------------------------------------------------------------
# Recording the network's computation
# --------------------------------------------------------------------------------------------------------------
#
# Incremental inference needs the network's computation graph. torch.fx's symbolic tracing patches
# torch.nn.Module.__call__ for the whole process while it runs, which breaks forward passes in other threads
# (widgets compute in background threads). So the graph is recorded instead, with a TorchFunctionMode, which is
# thread-local: one clean forward pass logs every torch call whose arguments derive from the image. Before use, a
# plan built on the recording must reproduce the network on two test patches (see _IncrementalPlan.build).

#: Tensor methods that read metadata, not values: harmless for replaying the recorded calls.
_METADATA_READS = {
    "size", "dim", "ndimension", "numel", "nelement", "__len__", "__get__", "stride", "is_contiguous",
    "element_size", "is_floating_point", "is_complex", "get_device", "storage_offset",
}


@dataclass(eq=False)
class _Call:
    """A torch call of the forward pass that reads the image (``func`` None: the image itself).

    ``args``/``kwargs`` hold :class:`_Ref` where they read earlier calls' outputs; ``value`` is the clean output.
    """

    func: Callable[..., object] | None
    args: tuple
    kwargs: dict
    inputs: list[_Call]
    value: object
    users: list[_Call] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class _Ref:
    """The output of ``call`` (element ``index`` of it, for calls returning several tensors)."""

    call: _Call
    index: int | None = None


def _map(structure: object, function: Callable[[object], object]) -> object:
    """Apply ``function`` to the leaves of nested tuples, lists and dicts."""
    if isinstance(structure, tuple):
        return tuple(_map(item, function) for item in structure)
    if isinstance(structure, list):
        return [_map(item, function) for item in structure]
    if isinstance(structure, dict):
        return {key: _map(item, function) for key, item in structure.items()}
    return function(structure)


def _leaves(structure: object) -> list[object]:
    found: list[object] = []
    _map(structure, found.append)
    return found


class _Recorder(TorchFunctionMode):
    """Records, in the current thread only, the torch calls whose arguments derive from ``image``."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = _Call(None, (), {}, [], image)
        self.calls: list[_Call] = []
        self.producers: dict[int, _Ref] = {id(image): _Ref(self.image)}
        self.problem: str | None = None

    def __torch_function__(self, func: Callable[..., object], types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs: list[_Call] = []

        def reference(value: object) -> object:
            if isinstance(value, torch.Tensor) and id(value) in self.producers:
                ref = self.producers[id(value)]
                if ref.call not in inputs:
                    inputs.append(ref.call)
                return ref
            return value

        recorded_args, recorded_kwargs = _map(args, reference), _map(kwargs, reference)
        if not inputs:
            return output  # a computation on parameters or constants only
        name = getattr(func, "__name__", "")
        if any(output is leaf for leaf in _leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)):
            if name.endswith("_") or name.startswith("__i") or kwargs.get("inplace"):
                self._report(f"it modifies activations in place ({name})")
            return output  # e.g. .contiguous() of a contiguous tensor: the same tensor, nothing to record
        if isinstance(output, torch.Tensor):
            outputs = {None: output}
        elif isinstance(output, (tuple, list)) and output and all(isinstance(o, torch.Tensor) for o in output):
            outputs = dict(enumerate(output))
        else:
            if name not in _METADATA_READS:
                self._report(f"its forward pass reads activation values ({name}), e.g. for control flow")
            return output
        call = _Call(func, recorded_args, recorded_kwargs, inputs, output)
        for source in inputs:
            source.users.append(call)
        self.calls.append(call)
        for index, tensor in outputs.items():
            self.producers[id(tensor)] = _Ref(call, index)
        return output

    def _report(self, problem: str) -> None:
        self.problem = self.problem or problem


@dataclass
class _Program:
    """The recorded forward pass: the image, the calls in order, and the network's output."""

    image: _Call
    calls: list[_Call]
    output: _Ref | None
    problem: str | None
    largest_bytes: int
    last_use: dict[_Call, int] = field(init=False)

    def __post_init__(self) -> None:
        self.last_use = {self.image: -1}
        for position, call in enumerate(self.calls):
            self.last_use.setdefault(call, position)
            for source in call.inputs:
                self.last_use[source] = position
        if self.output is not None:
            self.last_use[self.output.call] = len(self.calls)

    def replay(self, values: dict[_Call, object]) -> torch.Tensor:
        """Run the calls ``values`` does not hold yet (freeing each value after its last use); return the output."""
        values = dict(values)
        for position, call in enumerate(self.calls):
            if call not in values:
                args = _map(call.args, lambda v: _resolve(v, values))
                kwargs = _map(call.kwargs, lambda v: _resolve(v, values))
                values[call] = call.func(*args, **kwargs)
            for source in call.inputs:
                if self.last_use[source] == position:
                    values.pop(source, None)
        return _resolve(self.output, values)


def _resolve(value: object, values: dict[_Call, object]) -> object:
    if isinstance(value, _Ref):
        result = values[value.call]
        return result if value.index is None else result[value.index]
    return value


def _record(network: nn.Module, normalized: torch.Tensor) -> _Program:
    """Record the clean forward pass of ``network`` on ``normalized`` (thread-safe)."""
    recorder = _Recorder(normalized)
    with recorder:
        output = network(normalized)
    tensors = [c.value for c in recorder.calls if isinstance(c.value, torch.Tensor)] + [normalized]
    largest = max(t.numel() * t.element_size() for t in tensors)
    reference = recorder.producers.get(id(output)) if isinstance(output, torch.Tensor) else None
    problem = recorder.problem
    if reference is None and problem is None:
        problem = "its output is not a tensor computed from the image"
    return _Program(recorder.image, recorder.calls, reference, problem, largest)


# --------------------------------------------------------------------------------------------------------------
# Incremental inference
# --------------------------------------------------------------------------------------------------------------

_POINTWISE = {
    F.relu, torch.relu, torch.Tensor.relu, torch.sigmoid, torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh,
    F.leaky_relu, F.gelu, F.silu, F.elu, F.selu, F.celu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid,
    F.softplus, F.mish, torch.add, torch.mul, torch.sub, torch.Tensor.add, torch.Tensor.mul, torch.Tensor.sub,
    torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.Tensor.__sub__, torch.Tensor.__truediv__,
}
_CONCATENATIONS = {torch.cat, torch.concat}
#: Positional parameter names of the calls whose arguments matter.
_PARAMETERS = {
    torch.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    torch.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    F.avg_pool2d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    F.adaptive_avg_pool2d: ("input", "output_size"),
    torch.Tensor.mean: ("input", "dim", "keepdim"),
    F.dropout: ("input", "p", "training", "inplace"),
    F.dropout2d: ("input", "p", "training", "inplace"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    torch.cat: ("tensors", "dim"),
    torch.concat: ("tensors", "dim"),
}
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "groups": 1, "bias": None, "ceil_mode": False,
             "return_indices": False, "count_include_pad": True, "divisor_override": None, "dim": 0,
             "keepdim": False}
_TRAINING_DEFAULT = {F.dropout: True, F.dropout2d: True, F.batch_norm: False}


def _bind(call: _Call) -> dict[str, object]:
    """The call's arguments by parameter name (with the defaults that matter here)."""
    names = _PARAMETERS[call.func]
    bound = {**_DEFAULTS, **dict(zip(names, call.args, strict=False)), **call.kwargs}
    if call.func is torch.Tensor.mean and "dim" not in call.kwargs and len(call.args) < 2:
        bound["dim"] = None
    return bound


@dataclass
class _LocalOp:
    """A call computed on crops: output position g reads input positions ``[g*s - p, g*s - p + k)``.

    ``compute`` takes the input crops (padding already in them) keyed by input call. ``reduces`` marks global
    average pooling (``compute`` None): the plan updates the clean sums with the window instead, and its 1x1
    output is always worth computing that way.
    """

    node: _Call
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    compute: Callable[[dict[_Call, torch.Tensor]], torch.Tensor] | None
    reduces: bool = False

    @property
    def inputs(self) -> list[_Call]:
        return self.node.inputs


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (int(value[0]), int(value[1]))


def _local_op(node: _Call, input_size: tuple[int, int]) -> _LocalOp | None:
    """Describe ``node`` as a local operation, or None when it is not one (flatten, linear, reshapes...)."""

    def substituted(crops: dict[_Call, torch.Tensor]) -> tuple[tuple, dict]:
        def put(value: object) -> object:
            if isinstance(value, _Ref):
                return crops[value.call] if value.index is None else crops[value.call][value.index]
            return value

        return _map(node.args, put), _map(node.kwargs, put)

    def with_crops(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
        args, kwargs = substituted(crops)
        return node.func(*args, **kwargs)

    def first_crop(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
        return crops[node.inputs[0]]

    if any(isinstance(leaf, _Ref) and leaf.index is not None for leaf in _leaves((node.args, node.kwargs))):
        return None  # reads one output of a call with several
    pointwise = ((1, 1), (1, 1), (0, 0), 0.0)
    if node.func in _POINTWISE:
        constants = [leaf for leaf in _leaves((node.args, node.kwargs)) if isinstance(leaf, torch.Tensor)]
        if any(c.dim() >= 2 and c.shape[-2:] != (1, 1) for c in constants):
            return None  # e.g. adding a constant map that varies over space
        return _LocalOp(node, *pointwise, with_crops)
    if node.func not in _PARAMETERS:
        return None
    bound = _bind(node)
    if len(node.inputs) != 1 and node.func not in _CONCATENATIONS:
        return None
    if node.func in _CONCATENATIONS:
        return _LocalOp(node, *pointwise, with_crops) if bound["dim"] in (1, -3) else None
    if node.func in _TRAINING_DEFAULT:
        training = bound.get("training", _TRAINING_DEFAULT[node.func])
        return None if training else _LocalOp(node, *pointwise, with_crops)
    if not isinstance(bound["input"], _Ref):
        return None
    if node.func is torch.conv2d:
        weight, bias, stride, dilation, groups = (bound[k] for k in ("weight", "bias", "stride", "dilation", "groups"))
        if isinstance(weight, _Ref) or isinstance(bias, _Ref):
            return None
        kernel = _dilated(weight.shape[2:], dilation)
        padding = bound["padding"]
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(k // 2 if k % 2 else (k - 1) // 2 for k in kernel)
        padding = _pair(padding)

        def convolve(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return torch.conv2d(first_crop(crops), weight, bias, stride, 0, dilation, groups)

        return _LocalOp(node, kernel, _pair(stride), padding, 0.0, convolve)
    if node.func in (F.max_pool2d, torch.max_pool2d) and not bound["return_indices"]:
        kernel_size, dilation = bound["kernel_size"], bound["dilation"]
        stride = bound["stride"] if bound["stride"] not in (None, (), []) else kernel_size

        def max_pool(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return F.max_pool2d(first_crop(crops), kernel_size, stride, 0, dilation)

        return _LocalOp(node, _dilated(kernel_size, dilation), _pair(stride), _pair(bound["padding"]),
                        float("-inf"), max_pool)
    if node.func is F.avg_pool2d and not bound["ceil_mode"] and (
            bound["count_include_pad"] or _pair(bound["padding"]) == (0, 0)):
        kernel_size, divisor = bound["kernel_size"], bound["divisor_override"]
        stride = bound["stride"] if bound["stride"] not in (None, (), []) else kernel_size

        def average_pool(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return F.avg_pool2d(first_crop(crops), kernel_size, stride, 0, divisor_override=divisor)

        return _LocalOp(node, _pair(kernel_size), _pair(stride), _pair(bound["padding"]), 0.0, average_pool)
    global_mean = (node.func is F.adaptive_avg_pool2d and bound["output_size"] in (1, (1, 1), [1, 1])) or (
        node.func is torch.Tensor.mean and bound["keepdim"] and bound["dim"] is not None
        and sorted(d % 4 for d in _pair(bound["dim"])) == [2, 3])
    if global_mean:
        return _LocalOp(node, input_size, (1, 1), (0, 0), 0.0, None, reduces=True)
    return None


def _dilated(kernel_size: int | Sequence[int], dilation: int | Sequence[int]) -> tuple[int, int]:
    """The span of a dilated kernel, per axis."""
    return tuple(d * (k - 1) + 1 for d, k in zip(_pair(dilation), _pair(kernel_size), strict=True))


def _affected(start: int, stop: int, kernel: int, stride: int, padding: int, size: int) -> tuple[int, int]:
    """Output positions ``[a, b)`` whose input window ``[g*s - p, g*s - p + k)`` meets input rows ``[start, stop)``."""
    first = max(0, -(-(start + padding - kernel + 1) // stride))
    last = min(size, (stop - 1 + padding) // stride + 1)
    return first, max(first, last)


def _grid_index(tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int, map_width: int) -> torch.Tensor:
    """``(B, height, width)`` flat indices ``row * map_width + col`` of windows with per-element corners."""
    rows = tops.view(-1, 1, 1) + torch.arange(height, device=tops.device).view(1, -1, 1)
    cols = lefts.view(-1, 1, 1) + torch.arange(width, device=tops.device).view(1, 1, -1)
    return rows * map_width + cols


def _gather(flat_map: torch.Tensor, map_width: int, tops: torch.Tensor, lefts: torch.Tensor, height: int,
            width: int) -> torch.Tensor:
    """``(B, height, width, C)`` windows of a map stored as ``(rows * map_width, C)``, at per-element corners."""
    index = _grid_index(tops, lefts, height, width, map_width).reshape(-1)
    return flat_map.index_select(0, index).view(len(tops), height, width, -1)


def _scatter(target: torch.Tensor, windows: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Write ``windows[i]`` (``(B, C, h, w)``) into ``target[i]`` (``(B, H, W, C)``) at ``(rows[i], cols[i])``.

    The parts of a window that fall outside the target are dropped.
    """
    batch, height, width, channels = target.shape
    size_h, size_w = windows.shape[2:]
    target_rows = rows.view(-1, 1) + torch.arange(size_h, device=rows.device).view(1, -1)  # (B, h)
    target_cols = cols.view(-1, 1) + torch.arange(size_w, device=cols.device).view(1, -1)  # (B, w)
    batch_offset = torch.arange(batch, device=rows.device).view(-1, 1, 1) * (height * width)
    index = (batch_offset + target_rows[:, :, None] * width + target_cols[:, None, :]).reshape(-1)
    values = windows.permute(0, 2, 3, 1).reshape(-1, channels)
    inside_rows = (target_rows >= 0) & (target_rows < height)
    inside_cols = (target_cols >= 0) & (target_cols < width)
    inside = (inside_rows[:, :, None] & inside_cols[:, None, :]).reshape(-1)
    if not bool(inside.all()):
        index, values = index[inside], values[inside]
    target.view(-1, channels).index_copy_(0, index, values)


def _flat(feature_map: torch.Tensor) -> torch.Tensor:
    """A single ``(1, C, H, W)`` map as ``(H * W, C)`` rows (contiguous)."""
    return feature_map[0].permute(1, 2, 0).reshape(-1, feature_map.shape[1]).contiguous()




class _IncrementalPlan:
    """Which recorded calls are recomputed on windows, the windows' sizes and corners, and the clean maps.

    Spans are separable: the rows a call recomputes depend only on the patch's rows. So the plan tabulates, per
    call, the window corner for every distinct patch row span (and column span) of the boxes it was built for.
    """

    def __init__(self, program: _Program) -> None:
        self.program = program
        self.reason: str | None = program.problem
        self.clean: dict[_Call, object] = {}
        self.ops: list[_LocalOp] = []
        self.sizes: dict[_Call, tuple[int, int]] = {}
        self.corners: dict[_Call, tuple[dict[Span, int], dict[Span, int]]] = {}
        self.frontier: list[_Call] = []
        self.padded: dict[tuple[_Call, _Call], tuple[torch.Tensor, int]] = {}
        self.sums: dict[_Call, tuple[torch.Tensor, torch.Tensor]] = {}  # global pooling: clean sums, summed areas
        self.work_fraction = 1.0
        self.bytes_per_image = 0
        self.layout = _CHANNELS_LAST  # of the full-size maps handed to the rest of the network

    @classmethod
    def build(cls, program: _Program, fill_normalized: torch.Tensor, boxes: list[Box], test_boxes: list[Box],
              reference: torch.Tensor | None) -> _IncrementalPlan:
        """Choose what to recompute for ``boxes``, then check the plan against the network.

        ``reference`` holds the network's logits for ``test_boxes`` (some of ``boxes``).
        """
        plan = cls(program)
        if plan.reason is not None:
            return plan
        plan.clean = {call: call.value.contiguous(memory_format=_CHANNELS_LAST)
                      if isinstance(call.value, torch.Tensor) and call.value.dim() == 4 else call.value
                      for call in [program.image, *program.calls]}
        plan._select(boxes)
        problem = ""
        for layout in (_CHANNELS_LAST, torch.contiguous_format):
            plan.layout = layout
            reproduced, problem = _reproduces(lambda: plan.run(fill_normalized, test_boxes), reference)
            if reproduced:
                return plan
        plan.reason = f"recomputing windows did not reproduce the network on two test patches{problem}"
        return plan

    def _shape(self, node: _Call) -> tuple[int, int]:
        return tuple(self.clean[node].shape[2:])

    def _select(self, boxes: list[Box]) -> None:
        """Pick the calls to compute on windows and their window sizes; estimate the fraction of work left."""
        image = self.program.image
        rows = {image: {span: span for span in {(b[0], b[1]) for b in boxes}}}
        cols = {image: {span: span for span in {(b[2], b[3]) for b in boxes}}}
        self._accept(image, rows, cols)
        total_work = remaining_work = 0.0
        full_bytes = window_bytes = 0
        for node in self.program.calls:
            value = self.clean[node]
            if not isinstance(value, torch.Tensor):
                continue
            work = float(value.numel()) * _work_per_output(node)
            total_work += work
            op = self._local_op(node)
            if op is not None:
                height, width = self._shape(node)
                rows[node] = _propagate(op, 0, rows, height)
                cols[node] = _propagate(op, 1, cols, width)
                size = self._accept(node, rows, cols)
                if op.reduces or size[0] * size[1] <= MAX_WINDOW_FRACTION * height * width:
                    self.ops.append(op)
                    remaining_work += work * size[0] * size[1] / (height * width)
                    if not op.reduces:
                        crop_h, crop_w = ((n - 1) * s + k for n, s, k in zip(size, op.stride, op.kernel, strict=True))
                        window_bytes = max(window_bytes, value.element_size() * value.shape[1] * crop_h * crop_w)
                    continue
                del self.sizes[node], self.corners[node]
            remaining_work += work
            full_bytes = max(full_bytes, value.numel() * value.element_size())
        for op in self.ops:
            if op.reduces:  # summed-area table of the clean map: window sums in four look-ups
                clean = self.clean[op.inputs[0]][0].double()
                table = F.pad(clean.cumsum(1).cumsum(2), (1, 0, 1, 0))
                self.sums[op.node] = (clean.sum(dim=(1, 2)), table)
            for source in op.inputs:
                if not op.reduces:
                    self.padded[(source, op.node)] = self._padded_clean(source, op)
        output = self.program.output.call
        self.frontier = [n for n in self.sizes if n is output or any(user not in self.sizes for user in n.users)]
        full_bytes = max([full_bytes] + [self.clean[n].numel() * self.clean[n].element_size() for n in self.frontier])
        self.work_fraction = remaining_work / max(total_work, 1.0)
        self.bytes_per_image = 2 * max(full_bytes, window_bytes)

    def _accept(self, node: _Call, rows: dict[_Call, dict[Span, Span]],
                cols: dict[_Call, dict[Span, Span]]) -> tuple[int, int]:
        """Window size (the longest span) and window corners of ``node`` (windows stay inside the map)."""
        height, width = self._shape(node)
        size = (max(1, *(b - a for a, b in rows[node].values())), max(1, *(b - a for a, b in cols[node].values())))
        self.sizes[node] = size
        self.corners[node] = ({key: min(a, height - size[0]) for key, (a, _) in rows[node].items()},
                              {key: min(a, width - size[1]) for key, (a, _) in cols[node].items()})
        return size

    def _local_op(self, node: _Call) -> _LocalOp | None:
        """``node`` as a local operation on calls already computed on windows, or None."""
        if not node.inputs or not all(n in self.sizes and self.clean[n].dim() == 4 for n in node.inputs):
            return None
        if self.clean[node].dim() != 4:
            return None
        op = _local_op(node, self._shape(node.inputs[0]))
        if op is not None and op.kernel == (1, 1) and any(self._shape(n) != self._shape(node) for n in node.inputs):
            return None  # e.g. an element-wise sum that broadcasts over space
        return op

    def _padded_clean(self, source: _Call, op: _LocalOp) -> tuple[torch.Tensor, int]:
        """The clean input map of ``op`` padded with its padding value so every crop fits inside: flat, and width."""
        out_height, out_width = self._shape(op.node)
        in_height, in_width = self._shape(source)
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        bottom = max(0, (out_height - 1) * sh - ph + kh - in_height)
        right = max(0, (out_width - 1) * sw - pw + kw - in_width)
        padded = F.pad(self.clean[source], (pw, right, ph, bottom), value=op.pad_value)
        return _flat(padded), padded.shape[3]

    def run(self, fill_normalized: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
        """Logits of the occluded images for ``boxes`` (a subset of the boxes the plan was built for)."""
        row_keys = [(b[0], b[1]) for b in boxes]
        col_keys = [(b[2], b[3]) for b in boxes]
        device = fill_normalized.device
        corners = {node: (torch.tensor([row_corners[k] for k in row_keys], device=device),
                          torch.tensor([col_corners[k] for k in col_keys], device=device))
                   for node, (row_corners, col_corners) in self.corners.items()}
        image = self.program.image
        values = {image: self._input_window(fill_normalized, boxes, corners[image])}
        for op in self.ops:
            if op.reduces:
                source = op.inputs[0]
                values[op.node] = self._window_mean(op, values[source], corners[source])
                continue
            crops = {source: self._input_crop(source, op, corners[op.node], values[source], corners[source])
                     for source in op.inputs}
            values[op.node] = op.compute(crops)
        environment: dict[_Call, object] = dict.fromkeys(self.sizes)
        for node in self.frontier:
            clean = self.clean[node]
            full = _flat(clean).repeat(len(boxes), 1).view(len(boxes), *clean.shape[2:], clean.shape[1])
            _scatter(full, values[node], *corners[node])
            environment[node] = full.permute(0, 3, 1, 2).contiguous(memory_format=self.layout)
        return self.program.replay(environment)

    def _window_mean(self, op: _LocalOp, windows: torch.Tensor, corners: tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor:
        """Global average of the occluded maps: the clean sum, minus the clean windows' sums, plus the windows'."""
        total, table = self.sums[op.node]
        tops, lefts = corners
        height, width = windows.shape[2:]
        bottoms, rights = tops + height, lefts + width
        clean_windows = (table[:, bottoms, rights] - table[:, tops, rights] - table[:, bottoms, lefts]
                         + table[:, tops, lefts]).T  # (B, C)
        sums = total - clean_windows + windows.sum(dim=(2, 3), dtype=torch.float64)
        return (sums / (op.kernel[0] * op.kernel[1])).to(windows.dtype)[:, :, None, None]

    def _input_window(self, fill: torch.Tensor, boxes: list[Box],
                      corners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The occluded images inside the image's windows."""
        image = self.program.image
        height, width = self.sizes[image]
        tops, lefts = corners
        clean = self.clean[image]
        map_width = clean.shape[3]
        clean_windows = _gather(_flat(clean), map_width, tops, lefts, height, width)
        fill_windows = _gather(_flat(fill), map_width, tops, lefts, height, width)
        rows = torch.arange(height, device=tops.device).view(1, height) + tops.view(-1, 1)
        cols = torch.arange(width, device=tops.device).view(1, width) + lefts.view(-1, 1)
        box = torch.tensor(boxes, device=tops.device)
        inside_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])
        inside_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])
        inside = (inside_rows[:, :, None, None] & inside_cols[:, None, :, None]).to(clean.device)
        return torch.where(inside, fill_windows, clean_windows).permute(0, 3, 1, 2)

    def _input_crop(self, source: _Call, op: _LocalOp, corners: tuple[torch.Tensor, torch.Tensor],
                    source_values: torch.Tensor, source_corners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """What ``op`` reads of ``source``'s occluded map for its windows: the clean map with the new window pasted."""
        (size_h, size_w), (kh, kw), (sh, sw) = self.sizes[op.node], op.kernel, op.stride
        height, width = (size_h - 1) * sh + kh, (size_w - 1) * sw + kw
        tops, lefts = corners[0] * sh, corners[1] * sw  # in the coordinates of the padded clean map
        if op.padding == (0, 0) and (height, width) == self.sizes[source] and torch.equal(
                tops, source_corners[0]) and torch.equal(lefts, source_corners[1]):
            return source_values  # e.g. a point-wise op reading exactly the window below
        padded, padded_width = self.padded[(source, op.node)]
        crops = _gather(padded, padded_width, tops, lefts, height, width)
        _scatter(crops, source_values, source_corners[0] + op.padding[0] - tops,
                 source_corners[1] + op.padding[1] - lefts)
        return crops.permute(0, 3, 1, 2)


def _propagate(op: _LocalOp, axis: int, spans: dict[_Call, dict[Span, Span]], size: int) -> dict[Span, Span]:
    """Affected output span of ``op`` along ``axis`` per patch span (the hull of its inputs' spans)."""
    keys = spans[op.inputs[0]].keys()
    result = {}
    for key in keys:
        start = min(spans[n][key][0] for n in op.inputs)
        stop = max(spans[n][key][1] for n in op.inputs)
        result[key] = _affected(start, stop, op.kernel[axis], op.stride[axis], op.padding[axis], size)
    return result


def _work_per_output(node: _Call) -> float:
    """Rough multiply-adds per output element (convolutions and linear layers dominate; others count 1)."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if node.func is torch.conv2d and isinstance(weight, torch.Tensor):
        return float(weight[0].numel())
    if node.func is F.linear and isinstance(weight, torch.Tensor):
        return float(weight.shape[1])
    return 1.0


def _reproduces(compute: Callable[[], torch.Tensor], reference: torch.Tensor) -> tuple[bool, str]:
    """Whether ``compute()`` gives ``reference`` (up to float rounding), and what went wrong if it raised."""
    try:
        result = compute()
    except (RuntimeError, ValueError, TypeError, IndexError) as error:  # e.g. .view() of a channels-last tensor
        return False, f" ({type(error).__name__}: {error})"
    tolerance = 1e-4 * (1.0 + float(reference.abs().max()))  # float rounding grows with the logits' scale
    return result.shape == reference.shape and bool((result - reference).abs().max() <= tolerance), ""
