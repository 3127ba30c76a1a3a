"""DeepLIFT with the rescale rule (Shrikumar et al. 2017, "Learning Important Features
Through Propagating Activation Differences").

The input and its reference run through the model as one batch ``[x; x₀]``, so every
non-linearity sees both. In the backward pass an elementwise non-linearity f (ReLU,
sigmoid, tanh, GELU, ...) multiplies the incoming multiplier by Δy/Δx =
(f(x) − f(x₀)) / (x − x₀), falling back to f'(x) where a difference is lost in rounding
(see :func:`lost_in_rounding`). Max-pooling sends g·Δy to the winner for x (Δy ≥ 0) or for
x₀ (Δy < 0) and divides by Δx, so that Σ Δx·m = Σ g·Δy holds there too (Captum's
DeepLift gives the same maps where no ReLU module feeds the pooling, and a plain gradient
through the pooling where one does: 23–45 % off on CNNs). Linear layers,
convolutions, BatchNorm in eval mode, additions, average pooling and reshapes are linear and
keep their gradient. The result (x − x₀)·m sums to f(x) − f(x₀) for the selected output
("summation to delta"). Softmax and products of two activations have no rescale rule and
raise :class:`~lit_explain.NotAnalyzableModelError`, and so does a value computed from the
input without a gradient (``detach()``, ``torch.no_grad()``, an ``argmax`` index) where it
meets a differentiable one: its difference to the reference would be lost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Analyzer, NeuronSelection
from .errors import NotAnalyzableModelError
from .forward import outputs_close
from .gradient import check_reference, reference_like
from .kinds import (
    ACTIVATION,
    BATCH_NORM,
    KERNEL,
    LINEAR,
    MAX_POOL,
    RELU,
    STRUCTURE,
    WEIGHT_PRODUCT,
    differentiable,
)
from .operations import OperationCall, with_gradient
from .registry import register

LINEAR_KINDS = frozenset({KERNEL, WEIGHT_PRODUCT, BATCH_NORM, LINEAR, STRUCTURE})
#: A difference within this many machine epsilons of its operands' magnitude is rounding.
ROUNDING_ULPS = 8


def lost_in_rounding(delta: Tensor, value: Tensor, reference: Tensor) -> Tensor:
    """Where ``delta = value − reference`` carries no information: elementwise
    |Δ| ≤ c·eps(dtype)·max(|value|, |reference|), with c = :data:`ROUNDING_ULPS`.

    The threshold is relative, so that the rule means the same at every input scale (an
    absolute one, such as |Δ| < 1e-6, turns the whole map into a gradient map for inputs
    near 1e-6 and breaks summation-to-delta), and per element, because the rounding error
    of a stored number is proportional to that number's own magnitude: a scale taken over
    the whole tensor would let one large activation declare the small, exactly resolved
    differences of all the others to be noise, and replace their secant by a tangent.
    Exact zeros (x = x₀ at that element) are always included.
    """
    eps = torch.finfo(delta.dtype).eps
    return delta.abs() <= ROUNDING_ULPS * eps * torch.maximum(value.abs(), reference.abs())


def _vector_jacobian(call: OperationCall, source: Tensor, grad: Tensor) -> Tensor:
    """Ordinary gradient of the operation at ``source`` for the output gradient ``grad``."""
    with torch.enable_grad():
        leaf = source.detach().requires_grad_(True)
        output = call.replace_input(source, leaf).run()
        output = output if isinstance(output, Tensor) else output[0]  # (values, indices)
        (result,) = torch.autograd.grad(output, leaf, grad)
    return result


#: What DeepLIFT needs of a model's batch layout, and what breaks it.
LAYOUT = ("DeepLIFT runs the input and its reference as one batch [x; x₀] and pairs the two "
          "halves of every tensor along its first axis, so the model must keep the batch "
          "there, whole and in order, with no sample affecting another: a wrapper that runs "
          "it in chunks or reorders the samples, a time-major (L, N, ...) layout or "
          "statistics over the batch (a BatchNorm with track_running_stats=False) break "
          "that. Analyse the model inside the wrapper (batch first), or use "
          "integrated_gradients")


def _halves(tensor: Tensor, call: OperationCall) -> tuple[Tensor, ...]:
    """The x and reference halves of a ``[x; x₀]`` batch (refused where there are none)."""
    if tensor.dim() == 0 or len(tensor) % 2:
        raise NotAnalyzableModelError(
            f"{call.where()} gets a tensor of shape {tuple(tensor.shape)}, whose first axis "
            f"holds no [x; x₀] pairs: {LAYOUT}")
    return tensor.detach().chunk(2)


def _first_argument(call: OperationCall) -> object:
    """The operation's first argument, given by position or as ``input=``."""
    return call.args[0] if call.args else call.kwargs.get("input")


def _half_difference(tensor: Tensor, call: OperationCall) -> Tensor:
    """x-half minus reference half of a ``[x; x₀]`` batch."""
    value, reference = _halves(tensor, call)
    return value - reference


def _differences(tensor: Tensor, call: OperationCall) -> tuple[Tensor, Tensor]:
    """x-half minus reference half of a ``[x; x₀]`` batch, and where it is only rounding."""
    value, reference = _halves(tensor, call)
    delta = value - reference
    return delta, lost_in_rounding(delta, value, reference)


def _slope(call: OperationCall, source: Tensor, grad: Tensor,
           composite: Tensor | None = None) -> Tensor:
    """f'(x) times ``grad`` on the input half: for ReLU its step, otherwise by autograd; for
    ``x * g(x)`` written out, through the graph of its parts' output ``composite``, whose
    rules take their own slopes where x is within rounding of x₀."""
    if call.kind == RELU:
        return grad.chunk(2)[0] * (source.detach().chunk(2)[0] > 0)
    if composite is not None:  # (x is no argument of the call)
        return torch.autograd.grad(composite, source, grad)[0].chunk(2)[0]
    return _vector_jacobian(call, source, grad).chunk(2)[0]


def rescale_rule(call: OperationCall) -> Tensor:
    """Elementwise non-linearity: multiplier Δy/Δx on the input half, zero on the reference.

    The gradient f'(x) replaces Δy/Δx where Δx or a non-zero Δy is within rounding of its
    operands (for Δy: a smooth f of nearly equal inputs, e.g. a sigmoid near 0.5, whose
    difference of outputs is noise). A zero Δy with a resolved Δx (ReLU below zero on
    both sides, a saturated sigmoid) keeps its exact multiplier 0. A product of functions
    of one tensor x (``x * sigmoid(x)``, GELU written out) is one such f of x.
    """
    output = call.run()
    source = call.elementwise_of  # (x * g(x) written out: the parts' output, with its graph)
    composite = output if source is not None else None
    if source is None:
        if not call.inputs:  # a function of parameters or constants only
            return output
        source = call.inputs[0]  # (wherever it stands: 2 ** h, torch.div(2.0, h))
        if len(call.inputs) > 1 or source.shape != output.shape:  # (h ** e(x), c / h)
            raise NotAnalyzableModelError(
                f"{call.where()} is an elementwise operation of several tensors that require "
                f"grad, or one that broadcasts the tensor it is a function of to a larger "
                f"shape; DeepLIFT's rescale rule is defined for a function of one tensor, "
                f"elementwise (a weight that requires grad is frozen where the model "
                f"registers its module, not in a plain list)")
    delta_in, tiny = _differences(source, call)
    if call.kind == RELU:  # relu(a) − relu(b) is exact: no rounding check on Δy
        delta_out = _half_difference(output, call)
    else:
        delta_out, tiny_out = _differences(output, call)
        tiny = tiny | (tiny_out & (delta_out != 0))

    def backward(grad: Tensor) -> Tensor:
        grad_x = grad.chunk(2)[0]
        ratio = delta_out / torch.where(tiny, torch.ones_like(delta_in), delta_in)
        multiplier = grad_x * ratio
        if bool(tiny.any()):
            multiplier = torch.where(tiny, _slope(call, source, grad, composite), multiplier)
        return torch.cat([multiplier, torch.zeros_like(multiplier)])

    return with_gradient(source, output, backward)


#: ``torch.max_poolNd`` (no ``return_indices``) → the functional form that has it, same
#: positional arguments.
_WITH_INDICES = {torch.max_pool1d: F.max_pool1d, torch.max_pool2d: F.max_pool2d,
                 torch.max_pool3d: F.max_pool3d}
#: The max-poolings that give their winners' indices → how many spatial axes they pool.
_POOLS = {torch.max_pool1d: 1, F.max_pool1d: 1, F.adaptive_max_pool1d: 1,
          torch.max_pool2d: 2, F.max_pool2d: 2, F.adaptive_max_pool2d: 2,
          torch.max_pool3d: 3, F.max_pool3d: 3, F.adaptive_max_pool3d: 3}


def _pool_with_winners(call: OperationCall) -> tuple[Tensor, Tensor | None]:
    """The pooling's output and, where the call can give them, the flat spatial index of
    each output's winner (``None``: routed by autograd instead)."""
    if call.kwargs.get("return_indices") or len(call.args) > 6 or call.func not in _POOLS \
            or _first_argument(call).dim() != _POOLS[call.func] + 2:
        # the model asked for indices itself, a reduction (amax, max over a dimension), or an
        # input without a batch axis (torch's (C, H, W)), whose indices are per leading axis
        return call.run(), None
    func = _WITH_INDICES.get(call.func, call.func)
    output, winners = func(*call.args, **{**call.kwargs, "return_indices": True})
    return output, winners


def max_pool_rule(call: OperationCall) -> Tensor:
    """Max-pooling: g·Δy goes to the winner for x where the output grew and to the winner
    for x₀ where it shrank (a winner whose Δx has Δy's sign and is at least as large),
    then is divided by Δx."""
    source = _first_argument(call)
    if not differentiable(source):
        return call.run()
    output, winners = _pool_with_winners(call)
    values = output if isinstance(output, Tensor) else output[0]  # torch.max: (values, indices)
    if values.dim() == 0:  # the maximum of the whole batch: of the input and the reference
        # together, no difference of either; a value without a gradient (combined with a
        # differentiable tensor it is refused, read into Python the batch check sees it)
        return output.detach() if isinstance(output, Tensor) else output
    (delta_in, same), delta_out = _differences(source, call), _differences(values, call)[0]

    def to_winners(grad: Tensor) -> Tensor:  # max-pooling's own backward
        if winners is None:
            return _vector_jacobian(call, source, grad)
        flat = torch.zeros_like(source).flatten(2)
        return flat.scatter_add_(2, winners.flatten(2), grad.flatten(2)).view_as(source)

    def backward(grad: Tensor) -> Tensor:
        grad_x = grad.chunk(2)[0]
        share = grad_x * delta_out
        grew = delta_out >= 0
        split = torch.cat([torch.where(grew, share, 0.0), torch.where(grew, 0.0, share)])
        routed = to_winners(split).chunk(2)
        safe = torch.where(same, torch.ones_like(delta_in), delta_in)
        multiplier = (routed[0] + routed[1]) / safe
        if bool(same.any()):
            slope = to_winners(torch.cat([grad_x, torch.zeros_like(grad_x)]))
            multiplier = torch.where(same, slope.chunk(2)[0], multiplier)
        return torch.cat([multiplier, torch.zeros_like(multiplier)])

    result = with_gradient(source, values, backward)
    return result if isinstance(output, Tensor) else type(output)((result, *output[1:]))


@register("deep_lift")
class DeepLIFT(Analyzer):
    """DeepLIFT, rescale rule: (x − x₀) times the multipliers of the selected output.

    Parameters
    ----------
    reference_inputs:
        The reference x₀: a number or a tensor broadcastable to the input.
    """

    rule_based = True

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 reference_inputs: float | Tensor = 0.0, *,
                 output_key: int | str | None = None) -> None:
        super().__init__(model, neuron_selection_mode, output_key=output_key)
        check_reference(reference_inputs)
        self.reference_inputs = reference_inputs

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        x = x.requires_grad_(True)
        reference = reference_like(self.reference_inputs, x)
        both = torch.cat([x, reference])
        handlers = {RELU: rescale_rule, ACTIVATION: rescale_rule, MAX_POOL: max_pool_rule}
        logits, logits_of_reference = self._forward(both, handlers, LINEAR_KINDS,
                                                    refuse_detached=True).chunk(2)
        if self._forward_read_values:  # a branch on [x; x₀] may not be the one x takes alone
            self._check_stacking_changes_nothing(x, reference, logits, logits_of_reference)
        seed = self._seed(logits, self.selector(neuron_selection)(logits))
        multiplier = None
        if logits.requires_grad:
            (multiplier,) = torch.autograd.grad(logits, x, seed, allow_unused=True)
        if multiplier is None:
            reference_logits = logits_of_reference.detach()
            if not torch.allclose(logits.detach(), reference_logits):
                raise NotAnalyzableModelError(
                    "the explained output depends on the input only through values without a "
                    "gradient (detach(), a torch.no_grad() region): DeepLIFT cannot account "
                    "for its difference to the reference, and a zero map would not sum to it")
            return self._no_path_to_input(x)
        result = (x - reference) * multiplier
        self._check_summation_to_delta(result, seed * logits, seed * logits_of_reference)
        return result

    @staticmethod
    def _check_summation_to_delta(result: Tensor, explained: Tensor,
                                  explained_of_reference: Tensor) -> None:
        """Raise unless each sample's map sums to the difference of its explained outputs
        (``seed ⊙ logits``) to the reference's, up to rounding: 1e-3 of the terms'
        magnitude, and 1000 ulps of the outputs' (a difference of 1e-8 between two outputs
        of 0.1 is their rounding). It does for every model that keeps ``[x; x₀]`` apart in
        its batch, by the rules' construction; a map of halves paired otherwise (see
        :data:`LAYOUT`) sums to something else (100 % off)."""
        explained, explained_of_reference = explained.detach(), explained_of_reference.detach()
        total = result.detach().flatten(1).sum(1)
        delta = (explained - explained_of_reference).sum(1)
        outputs = (explained.abs() + explained_of_reference.abs()).sum(1)
        tolerance = 1e-3 * (result.detach().abs().flatten(1).sum(1) + delta.abs()) + \
            1e3 * torch.finfo(delta.dtype).eps * outputs
        off = (total - delta).abs() > tolerance
        if bool(off.any()):
            i = int(off.nonzero()[0])
            raise NotAnalyzableModelError(
                f"the map of sample {i} sums to {float(total[i]):.6g}, not to its explained "
                f"output's difference to the reference's, {float(delta[i]):.6g}: {LAYOUT}")

    def _check_stacking_changes_nothing(self, x: Tensor, reference: Tensor, logits: Tensor,
                                        logits_of_reference: Tensor) -> None:
        """Raise unless the model gives ``x`` and the reference, each run alone, the outputs
        it gave them stacked (a model that reads values, ``if x.sum() > 0:``, may branch on
        the whole batch)."""
        with torch.no_grad():
            alone = [self.logits(self.model(t.detach().clone()), len(t)) for t in (x, reference)]
        if not all(outputs_close(s, a) for s, a in zip((logits, logits_of_reference), alone,
                                                          strict=True)):
            raise NotAnalyzableModelError(
                "the model reads tensor values (a branch such as `if x.sum() > 0:`) and gives "
                "the input stacked with its reference another output than the input alone: "
                "DeepLIFT runs them as one batch, so its map would explain another function. "
                "Make the branch per sample, or use a gradient method")
