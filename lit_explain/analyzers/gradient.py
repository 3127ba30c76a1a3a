"""Gradient-family analyzers: input, random, gradient, Input×Gradient, SmoothGrad, IG.

All backward passes here start from 1 at the selected output (iNNvestigate's convention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Analyzer, NeuronSelection, Selector
from .registry import register
from .validation import (
    check_choice,
    check_number,
    check_positive_int,
    check_seed,
    is_finite_number,
)

POSTPROCESS = (None, "abs", "square")


def postprocess_map(attribution: Tensor, postprocess: str | None) -> Tensor:
    """iNNvestigate's gradient ``postprocess``: ``None``, ``"abs"`` or ``"square"``."""
    if postprocess == "abs":
        return attribution.abs()
    if postprocess == "square":
        return attribution.square()
    return attribution


class DeviceGenerators:
    """An analyzer's own random numbers, drawn on the input's device: one generator per
    device, each seeded with ``seed`` at its first use (the global RNG is never used).

    Drawing on the GPU matters: SmoothGrad's noise drawn on the CPU and copied made it a
    third slower than Captum's on an H200. A seed gives the same draws on every run on one
    device, not the same on a CPU and a GPU (their generators differ).
    """

    def __init__(self, seed: int) -> None:
        check_seed(seed)
        self.seed = int(seed)
        self._by_device: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        """The generator for ``device``."""
        if device not in self._by_device:
            self._by_device[device] = torch.Generator(device).manual_seed(self.seed)
        return self._by_device[device]

    def restart(self) -> None:
        """Draw from the start again: the next draws are those after construction."""
        for generator in self._by_device.values():
            generator.manual_seed(self.seed)


def check_reference(reference_inputs: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``reference_inputs`` is a finite number or a tensor of
    finite values."""
    if isinstance(reference_inputs, Tensor):
        if not bool(torch.isfinite(reference_inputs).all()):
            raise ValueError("reference_inputs holds values that are not finite (nan or inf); "
                             "expected finite values")
    elif not is_finite_number(reference_inputs):
        raise ValueError(f"reference_inputs={reference_inputs!r} is not valid; expected a "
                         f"finite number or a tensor")


def reference_like(reference_inputs: float | Tensor, x: Tensor) -> Tensor:
    """The reference input (baseline) broadcast to ``x``: a number or a tensor."""
    reference = torch.as_tensor(reference_inputs, dtype=x.dtype, device=x.device)
    try:
        return reference.expand_as(x)
    except RuntimeError:
        raise ValueError(f"reference_inputs of shape {tuple(reference.shape)} does not "
                         f"broadcast to the input's shape {tuple(x.shape)}") from None


def path_selector(analyzer: Analyzer, x: Tensor, neuron_selection: NeuronSelection
                  ) -> Callable[[int], Selector]:
    """``repeats ↦`` a selector for ``repeats`` stacked copies of the batch ``x``, with the
    output neurons chosen on ``x`` itself.

    ``"max_activation"`` picks each sample's argmax on the unperturbed input, so that every
    point of a path or of a noise cloud explains the same output neuron. That takes one
    gradient-free forward pass of ``x``, run once per analysis (not once per chunk: at
    batch 16 and 64 inputs per chunk that would add a quarter of the work of IG).
    ``"index"`` chooses on the first copy of the batch (one index per sample of ``x``) and
    repeats the choice for every copy; ``"all"`` chooses nothing.
    """
    select = analyzer.selector(neuron_selection)
    mode = analyzer.neuron_selection_mode
    if mode == "all":
        return lambda repeats: select
    if mode == "index":
        return lambda repeats: lambda logits: select(logits[:len(x)]).repeat(repeats)
    with torch.no_grad():
        indices = select(analyzer.logits(analyzer.model(x.clone()), len(x)))  # may modify it
    return lambda repeats: lambda logits: indices.repeat(repeats)


#: Input values a chunk of points holds where ``batch_size`` is left to the analyzer.
CHUNK_VALUES = 2**18
#: Inputs per chunk at most where ``batch_size`` is left to the analyzer.
AUTO_CHUNK_INPUTS = 64


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """The dtype the path methods sum their points' gradients and place their points in: at
    least float32 (a bfloat16 sum of 2048 SmoothGrad gradients kept 14 % of them; bfloat16
    step numbers above 256 repeat, 300, 300, 302, ...), the input's where it is finer."""
    return torch.promote_types(x.dtype, torch.float32)


def chunk_sizes(total: int, per_chunk: int) -> list[int]:
    """Split ``total`` items into chunks of at most ``per_chunk``."""
    return [min(per_chunk, total - start) for start in range(0, total, per_chunk)]


@register("input")
class Input(Analyzer):
    """Returns the input itself: the baseline every map should beat (iNNvestigate ``input``)."""

    needs_logits = False

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        return x.clone()


@register("random")
class Random(Analyzer):
    """Gaussian noise shaped like the input: a sanity baseline (iNNvestigate ``random``).

    Parameters
    ----------
    stddev:
        Standard deviation of the noise.
    seed:
        Seed of the analyzer's own generator on the input's device (see
        :class:`DeviceGenerators`); the global RNG is never used.
    """

    needs_logits = False

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 stddev: float = 1.0, seed: int = 0, *,
                 output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, output_key=output_key)
        check_number("stddev", stddev, at_least=0)
        self.stddev = stddev
        self.generators = DeviceGenerators(seed)

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        noise = torch.randn(x.shape, generator=self.generators.on(x.device), dtype=x.dtype,
                            device=x.device)
        return noise * self.stddev


@register("gradient")
class Gradient(Analyzer):
    """The gradient of the selected output w.r.t. the input (Simonyan et al. 2014, "Deep
    Inside Convolutional Networks: Visualising Image Classification Models and Saliency Maps").

    Parameters
    ----------
    postprocess:
        ``None``, ``"abs"`` (saliency) or ``"square"``.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 postprocess: str | None = None, *, output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, output_key=output_key)
        check_choice("postprocess", postprocess, POSTPROCESS)
        self.postprocess = postprocess

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        return postprocess_map(self._backward(x, self.selector(neuron_selection)),
                               self.postprocess)


@register("input_t_gradient")
class InputTimesGradient(Analyzer):
    """Input × gradient (Shrikumar et al. 2016, "Not Just a Black Box"). Equals LRP-z on
    ReLU networks without biases."""

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        return x * self._backward(x, self.selector(neuron_selection))


class _BatchedPathAnalyzer(Analyzer):
    """Averages gradients over many modified copies of the batch, in batched chunks."""

    def __init__(self, model: nn.Module, neuron_selection_mode: str, batch_size: int | None,
                 output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, output_key=output_key)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        self.batch_size = batch_size

    def points_per_chunk(self, x: Tensor) -> int:
        """How many points (copies of the whole batch ``x``) go through the model at once.

        With ``batch_size=None``: as many as fill :data:`CHUNK_VALUES` input values, at
        most :data:`AUTO_CHUNK_INPUTS` inputs, and at least one point. Large chunks of large
        inputs do not pay on a CPU: every activation of a chunk of 64 images of 3×64×64 is
        a fresh allocation of tens of MB (new pages on every pass), which made IG(32) on 16
        such images a third slower than in chunks of one copy of the batch
        (``benchmarks/analyzers.py``); small inputs (the 8×8 digits) keep chunks of 64.
        """
        batch_size = self.batch_size
        if batch_size is None:
            batch_size = min(AUTO_CHUNK_INPUTS, CHUNK_VALUES // max(1, x[0].numel()))
        return max(1, batch_size // len(x))

    def _mean_gradient(self, x: Tensor, points: int, make_points, neuron_selection) -> Tensor:
        """Mean over ``points`` of map(point), in :func:`accumulation_dtype`;
        ``make_points(start, count)`` returns a (count·N, ...) batch and its per-point map is
        given by ``self._point_map``."""
        per_chunk = self.points_per_chunk(x)
        selector_for = path_selector(self, x, neuron_selection)
        total = torch.zeros(x.shape, dtype=accumulation_dtype(x), device=x.device)
        start = 0
        for count in chunk_sizes(points, per_chunk):
            batch = make_points(start, count)
            maps = self._point_map(self._backward(batch, selector_for(count)))
            total += maps.reshape(count, *x.shape).sum(dim=0, dtype=total.dtype)
            start += count
        return total / points

    def _point_map(self, gradient: Tensor) -> Tensor:
        return gradient


@register("smoothgrad")
class SmoothGrad(_BatchedPathAnalyzer):
    """The gradient averaged over noisy copies of the input (Smilkov et al. 2017,
    "SmoothGrad: removing noise by adding noise").

    Parameters
    ----------
    augment_by_n:
        Number of noisy copies per sample.
    noise_scale:
        Standard deviation of the Gaussian noise relative to each sample's value range
        (max − min), the paper's "noise level" (10–20 % works well). iNNvestigate 2.x
        ignores this parameter; here it is honoured. ``0`` gives the plain gradient.
    postprocess:
        ``None``, ``"abs"`` or ``"square"``, applied to each noisy gradient before averaging
        (``"square"`` is the paper's SmoothGrad²).
    batch_size:
        At most this many inputs go through the model at once (at least the whole batch).
        ``None``: chosen from the input's size (see :meth:`points_per_chunk`): 64 for
        small inputs, one copy of the batch for images of 3×64×64 and larger. The noisy
        copies of several samples share a forward pass, so the model must treat its samples
        independently (no branch on a value of the whole batch).
    seed:
        Seed of the analyzer's own generator on the input's device (see
        :class:`DeviceGenerators`); the global RNG is never used. The same seed and
        ``batch_size`` give the same map (the noise is drawn chunk by chunk, and a CPU
        generator's stream depends on the sizes drawn).
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 augment_by_n: int = 64, noise_scale: float = 0.1,
                 postprocess: str | None = None, batch_size: int | None = None,
                 seed: int = 0, *,
                 output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, batch_size, output_key)
        check_positive_int("augment_by_n", augment_by_n)
        check_number("noise_scale", noise_scale, at_least=0)
        check_choice("postprocess", postprocess, POSTPROCESS)
        self.augment_by_n = augment_by_n
        self.noise_scale = noise_scale
        self.postprocess = postprocess
        self.generators = DeviceGenerators(seed)

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        flat = x.reshape(len(x), -1)
        sigma = (flat.amax(dim=1) - flat.amin(dim=1)) * self.noise_scale
        sigma = sigma.reshape(len(x), *([1] * (x.dim() - 1)))

        generator = self.generators.on(x.device)

        def noisy(start: int, count: int) -> Tensor:
            noise = torch.randn((count, *x.shape), generator=generator, dtype=x.dtype,
                                device=x.device)
            return torch.addcmul(x, noise, sigma).reshape(count * len(x), *x.shape[1:])

        return self._mean_gradient(x, self.augment_by_n, noisy, neuron_selection)

    def _point_map(self, gradient: Tensor) -> Tensor:
        return postprocess_map(gradient, self.postprocess)


@register("integrated_gradients")
class IntegratedGradients(_BatchedPathAnalyzer):
    """Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
    Networks"): (x − x₀) times the mean gradient on the straight path from x₀ to x.

    The integral is the left Riemann sum over ``steps`` points x₀ + k/steps·(x − x₀),
    k = 0 … steps − 1, as iNNvestigate computes it.

    Parameters
    ----------
    steps:
        Number of points on the path.
    reference_inputs:
        The baseline x₀: a number or a tensor broadcastable to the input.
    batch_size:
        At most this many inputs go through the model at once (at least the whole batch).
        ``None``: chosen from the input's size (see :meth:`points_per_chunk`): 64 for
        small inputs, one copy of the batch for images of 3×64×64 and larger. The path
        points of several samples share a forward pass, so the model must treat its samples
        independently (no branch on a value of the whole batch).
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 steps: int = 64, reference_inputs: float | Tensor = 0.0,
                 batch_size: int | None = None, *,
                 output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, batch_size, output_key)
        check_positive_int("steps", steps)
        check_reference(reference_inputs)
        self.steps = steps
        self.reference_inputs = reference_inputs

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        reference = reference_like(self.reference_inputs, x)
        difference = x - reference

        precise = accumulation_dtype(x)

        def path(start: int, count: int) -> Tensor:
            alphas = torch.arange(start, start + count, dtype=precise, device=x.device)
            alphas = (alphas / self.steps).reshape(count, *([1] * x.dim()))
            points = reference.to(precise) + alphas * difference.to(precise)
            return points.to(x.dtype).reshape(count * len(x), *x.shape[1:])

        return difference.to(precise) * self._mean_gradient(x, self.steps, path,
                                                            neuron_selection)
