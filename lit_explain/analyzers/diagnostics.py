"""Reverse-pass diagnostics: iNNvestigate's ``reverse_*`` options, as one mechanism.

iNNvestigate's reverse analyzers take ``reverse_keep_tensors``, ``reverse_check_finite``,
``reverse_clip_values``, ``reverse_check_min_max_values`` and
``reverse_project_bottleneck_layers``. Here they are keyword arguments of every analyzer
whose map is one modified backward pass (the LRP family, Deep Taylor, Deconvnet, Guided
Backprop, Input×Gradient, PatternNet, PatternAttribution), and they all work the same way:
the input and the output of every *layer* (each kernel call — linear, convolution,
transposed convolution — and each BatchNorm) get an identity node whose backward pass sees
the relevance flowing there. It can record it, check it, clip it or rescale it, keyed by the
module path of the layer (``"features.3"``; a module called twice gets ``"features.3:1"``
for its second call, a call in the model's own ``forward`` ``"<model>"``).

"Relevance" is what the method sends backward, in the units of the map: for LRP and Deep
Taylor the relevance itself (also when the analyzer carries it per unit of input, see
:class:`~.lrp.rules.RelativeFlow`: the nodes convert), for the gradient family and the
pattern analyzers the backward signal. With every option off (the default) nothing is
inserted: the analysis is exactly what it is without this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import NotAnalyzableModelError
from .kinds import ALL_KINDS, BATCH_NORM, KERNEL, NORMALIZATION, SOFTMAX, WEIGHT_PRODUCT
from .operations import Handler, OperationCall
from .validation import check_bool, is_finite_number

#: The operation kinds whose input and output are observed: the layers, and the
#: transformer operations whose rules absorb relevance (a LayerNorm's bias, AttnLRP's
#: softmax rule), so that the conservation report accounts for them.
LAYER_KINDS = (KERNEL, WEIGHT_PRODUCT, BATCH_NORM, NORMALIZATION, SOFTMAX)

#: Where the relevance of the model output is recorded.
OUTPUT_KEY = "<output>"

RelevanceScale = Callable[[Tensor], Tensor | None]


@dataclass(frozen=True)
class ReverseOptions:
    """The reverse-pass options of one analyzer (iNNvestigate's ``reverse_*`` parameters).

    Attributes
    ----------
    keep_tensors:
        Keep the relevance at every layer's input; after :meth:`Analyzer.analyze` it is in
        ``analyzer.reversed_tensors`` (module path → tensor shaped like the layer's input).
    check_finite:
        Raise ``FloatingPointError`` naming the first layer (in the order of the backward
        pass) whose output or input relevance is not finite.
    clip_values:
        ``(low, high)``: clip the relevance at every layer's input to this range.
    check_min_max_values:
        Record the smallest and largest relevance at every layer's input in
        ``analyzer.reversed_min_max`` (module path → ``(min, max)``).
    project_bottleneck_layers:
        Rescale the relevance at every layer's input, and the final map, so that each
        sample's largest absolute value is 1 (iNNvestigate projected to [-1, 1] against
        overflow in deep networks). The backward passes here are positively homogeneous, so
        on a sequential network this changes each sample's scale only; where branches meet
        again (a residual add) each branch was rescaled on its own, and the map's direction
        changes too (a ResNet's maps, cosine 0.4–0.6 to the unprojected ones).
    """

    keep_tensors: bool = False
    check_finite: bool = False
    clip_values: tuple[float, float] | None = None
    check_min_max_values: bool = False
    project_bottleneck_layers: bool = False

    def __post_init__(self) -> None:
        for name in ("keep_tensors", "check_finite", "check_min_max_values",
                     "project_bottleneck_layers"):
            check_bool(f"reverse_{name}", getattr(self, name))
        clip = self.clip_values
        if clip is not None:
            valid = (isinstance(clip, (tuple, list)) and len(clip) == 2 and all(
                is_finite_number(v) for v in clip) and clip[0] < clip[1])
            if not valid:
                raise ValueError(f"reverse_clip_values={clip!r} is not valid; expected None or "
                                 f"(low, high): two finite numbers (not tensors) with low < high")
            object.__setattr__(self, "clip_values", (float(clip[0]), float(clip[1])))

    @property
    def active(self) -> bool:
        """Whether any option is on (then layers get observing nodes)."""
        return (self.keep_tensors or self.check_finite or self.clip_values is not None
                or self.check_min_max_values or self.project_bottleneck_layers)

    def recorder(self, relevance_scale: RelevanceScale) -> ReverseRecorder | None:
        """A recorder for one backward pass, or ``None`` when every option is off."""
        return ReverseRecorder(self, relevance_scale) if self.active else None


def project(relevance: Tensor, samples: Tensor | None = None) -> Tensor:
    """Each sample scaled so that its largest absolute value is 1 (zero maps stay zero).
    ``samples``: the sample of each element (:func:`sample_index`); by default the first
    axis holds them."""
    samples = first_axis_index(relevance) if samples is None else samples
    flat = samples.reshape(-1)
    peak = relevance.new_zeros(int(flat.max()) + 1).scatter_reduce_(
        0, flat, relevance.detach().abs().reshape(-1), "amax")
    return relevance / peak.clamp(min=torch.finfo(relevance.dtype).tiny)[samples]


def per_sample_sum(relevance: Tensor, samples: Tensor | None = None) -> Tensor:
    """Σ of each sample's elements: → ``(N,)``. ``samples`` as for :func:`project`."""
    if samples is None:
        return relevance.reshape(len(relevance), -1).sum(dim=1)
    flat = samples.reshape(-1)
    return relevance.new_zeros(int(flat.max()) + 1).index_add_(0, flat, relevance.reshape(-1))


def first_axis_index(tensor: Tensor) -> Tensor:
    """The :func:`sample_index` of a tensor whose first axis holds the samples."""
    return _along(torch.arange(len(tensor), device=tensor.device), 0, tensor.shape)


def _along(index: Tensor, axis: int, shape: torch.Size) -> Tensor:
    """``index`` (one value per position of ``axis``) spread over a tensor of ``shape``."""
    view = [1] * len(shape)
    view[axis] = -1
    return index.reshape(view).expand(shape)


@dataclass(frozen=True)
class FirstSampleCopies:
    """Every layer's input and output relevance (by layer key) when a batch of ``count``
    copies of the batch's first sample is analysed: against them, the per-sample diagnostics
    find which sample each element of a layer's tensors belongs to (:func:`sample_index`)."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    count: int


def copies_for(batch: int) -> int:
    """How many copies of the first sample tell a batch of ``batch`` samples' layout: two,
    or three for a batch of two (whose tensors would have the copies' shapes)."""
    return 3 if batch == 2 else 2


def sample_index(key: str, tensor: Tensor, copies: FirstSampleCopies | None,
                 outputs: bool = False) -> Tensor:
    """Which sample each element of layer ``key``'s input relevance (``outputs``: output
    relevance) for a batch belongs to: an integer tensor of ``tensor``'s shape, found against
    ``copies`` (``None``: the batch is one sample, all of the tensor is it).

    The samples lie along the one axis where the shapes differ. A sequence-first layer
    (``(L, N, E)``, as inside ``nn.TransformerEncoderLayer(batch_first=False)``) has them on
    its second axis: taking the first for it made per-position sums of "samples" (a crash
    of the conservation report, maps 57 % off under ``reverse_project_bottleneck_layers``).
    A layer fed the samples' rows flattened into one axis (``x.view(-1, d)`` before a
    GPT-2 ``Conv1D``, ``(N·L, d)``) holds them in blocks when the samples were the outer
    axis, interleaved when they were the inner one (a sequence-first ``(L, N, d)``
    flattened): the copies' tensor repeats in blocks or row by row, whatever the other
    samples are and whatever rescales them (clipping, the projection of the layers above)."""
    shape = tensor.shape
    if copies is None:
        return torch.zeros(shape, dtype=torch.long, device=tensor.device)
    count, copies = copies.count, copies.outputs if outputs else copies.inputs
    if key not in copies:
        raise NotAnalyzableModelError(
            f"layer {key!r} is not met when copies of the batch's first sample are analysed, "
            f"against which the per-sample diagnostics (reverse_project_bottleneck_layers, "
            f"conservation_report) find each layer's axis of the samples: the model runs "
            f"other layers for other batches")
    copied = copies[key]
    differing = [a for a in range(len(shape)) if copied.dim() != len(shape)
                 or shape[a] != copied.shape[a]]
    why = "the model mixes its samples there"
    if len(differing) == 1:
        axis = differing[0]
        length, size = copied.shape[axis] // count, shape[axis]
        if length and copied.shape[axis] % count == 0 and size % length == 0:
            samples = torch.arange(size // length, device=tensor.device)
            if length == 1:
                return _along(samples, axis, shape)
            in_blocks = _repeats(copied, axis, (count, length), axis)
            row_by_row = _repeats(copied, axis, (length, count), axis + 1)
            if in_blocks != row_by_row:
                layout = samples.repeat_interleave(length) if in_blocks else samples.repeat(
                    length)
                return _along(layout, axis, shape)
            if in_blocks:
                why = (f"the first sample's relevance is the same in each of its {length} "
                       f"rows, which tells no layout (analyze its samples one at a time, or "
                       f"put first a sample whose relevance there differs between rows)")
    raise NotAnalyzableModelError(
        f"layer {key!r}: its tensors (shape {tuple(shape)}; for {count} copies of the first "
        f"sample {tuple(copied.shape)}) hold the samples on no one axis, whole or flattened "
        f"in blocks or interleaved with other axes, which the per-sample diagnostics "
        f"(reverse_project_bottleneck_layers, conservation_report) need: {why}")


def _repeats(tensor: Tensor, axis: int, split: tuple[int, int], along: int) -> bool:
    """Whether ``tensor``, its ``axis`` split into ``split``, is the same at every index of
    the axis ``along`` (float rounding allowed)."""
    parts = tensor.unflatten(axis, split)
    first = parts.narrow(along, 0, 1).expand_as(parts)
    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    return bool(torch.allclose(parts, first, rtol=1e-5, atol=1e-7 * peak))


class _Observe(torch.autograd.Function):
    """Identity forward (a copy, so that the model may modify it in place); backward, the
    incoming gradient goes through ``backward``."""

    @staticmethod
    def forward(ctx, tensor: Tensor, backward: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.backward = backward
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward(grad), None


@dataclass
class ReverseRecorder:
    """What one backward pass observed (made by :meth:`ReverseOptions.recorder`).

    Parameters
    ----------
    options:
        What to do at each layer.
    relevance_scale:
        ``m(t)`` such that the relevance at a tensor ``t`` is ``m(t) ⊙ gradient``, or
        ``None`` when the gradient is the relevance itself (the analyzer knows which).
    """

    options: ReverseOptions
    relevance_scale: RelevanceScale
    inputs: dict[str, Tensor] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)
    min_max: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Every layer's relevance for copies of the batch's first sample (``None``: the batch
    #: is one sample), where a per-sample option needs to know each element's sample.
    copies: FirstSampleCopies | None = None
    #: Layer keys in the order of the forward pass.
    order: list[str] = field(default_factory=list)
    _calls: dict[str, int] = field(default_factory=dict)

    def wrap(self, handlers: dict[str, Handler] | None, passthrough: frozenset[str],
             self_observed: frozenset[str] = frozenset()
             ) -> tuple[dict[str, Handler], frozenset[str]]:
        """The analyzer's handlers with every layer's input and output observed.

        A plain gradient (``handlers=None``) lets every kind pass; a layer kind that passed
        through with its ordinary gradient becomes a handler that runs it as it is. The
        handlers of ``self_observed`` kinds get the output observer in the call
        (``OperationCall.observe_output``) and apply it themselves.
        """
        if handlers is None:
            handlers, passthrough = {}, ALL_KINDS
        handlers = dict(handlers)
        for kind in LAYER_KINDS:
            handler = handlers.get(kind)
            if handler is None and kind in passthrough:
                handler = OperationCall.run
            if handler is not None:
                handlers[kind] = self._observing(handler, kind in self_observed)
        return handlers, passthrough

    def _observing(self, handler: Handler, self_observed: bool) -> Handler:
        def observed(call: OperationCall) -> Tensor:
            if not call.inputs:
                return handler(call)
            key = self._key(call)
            source = call.inputs[0]
            observe_input = lambda t: self.observe(t, key, self._on_input)  # noqa: E731
            observe_output = lambda t: self.observe(t, key, self._on_output)  # noqa: E731
            if self_observed:
                return handler(dataclasses.replace(call, observe_input=observe_input,
                                                   observe_output=observe_output))
            return observe_output(handler(call.replace_input(source, observe_input(source))))

        return observed

    def _key(self, call: OperationCall) -> str:
        path = call.module_path or "<model>"
        count = self._calls.get(path, 0)
        self._calls[path] = count + 1
        key = path if count == 0 else f"{path}:{count}"
        self.order.append(key)
        return key

    def in_forward_order(self, recorded: dict[str, object]) -> dict[str, object]:
        """``recorded`` (filled during the backward pass) in the order of the forward pass."""
        return {key: recorded[key] for key in self.order if key in recorded}

    def observe(self, tensor: Tensor, key: str,
                on_relevance: Callable[[str, Tensor], Tensor | None]) -> Tensor:
        """``tensor`` forward; backward, ``on_relevance(key, relevance)`` sees the relevance
        there and may return a replacement."""
        scale = self.relevance_scale(tensor)
        scale = None if scale is None else scale.detach()

        def backward(grad: Tensor) -> Tensor:
            relevance = grad if scale is None else grad * scale
            changed = on_relevance(key, relevance)
            if changed is None:
                return grad
            if scale is None:
                return changed
            nonzero = scale != 0
            return torch.where(nonzero, changed / torch.where(nonzero, scale, 1), grad)

        return _Observe.apply(tensor, backward)

    def _check(self, key: str, relevance: Tensor, where: str) -> None:
        if self.options.check_finite and not bool(torch.isfinite(relevance).all()):
            bad = int((~torch.isfinite(relevance)).sum())
            place = "the model output" if key == OUTPUT_KEY else f"the {where} of layer {key!r}"
            raise FloatingPointError(
                f"the relevance at {place} is not finite ({bad} of {relevance.numel()} values "
                f"are NaN or infinite); the first place in the backward pass where it happens")

    def _on_output(self, key: str, relevance: Tensor) -> None:
        self._check(key, relevance, "output")
        if self.options.keep_tensors:  # (a layer whose output several uses observe, as a
            # merged BatchNorm and a skip connection: the relevance of all of them)
            kept = self.outputs.get(key)
            self.outputs[key] = relevance.detach() if kept is None else kept + relevance.detach()

    def _on_input(self, key: str, relevance: Tensor) -> Tensor | None:
        self._check(key, relevance, "input")
        options, changed = self.options, None
        if options.clip_values is not None:
            changed = relevance.clamp(*options.clip_values)
        if options.project_bottleneck_layers:
            changed = relevance if changed is None else changed
            changed = project(changed, sample_index(key, changed, self.copies))
        final = relevance if changed is None else changed
        if options.keep_tensors:
            self.inputs[key] = final.detach()
        if options.check_min_max_values:
            low = float(final.min()) if final.numel() else math.nan
            high = float(final.max()) if final.numel() else math.nan
            self.min_max[key] = (low, high)
        return changed

    def on_model_output(self, key: str, relevance: Tensor) -> None:
        """The relevance the backward pass starts from (recorded under :data:`OUTPUT_KEY`)."""
        self._on_output(key, relevance)
