"""Every zoo model × every registered analyzer: the method's identity, or a clear refusal.

For each pair the analysis must give a map that satisfies an identity computed here with
plain ``torch.autograd`` on the model in eval mode (selected logit: the per-sample argmax),
or raise :class:`~lit_explain.NotAnalyzableModelError` naming the operation and the module
path, and only where the model holds an operation the method has no rule for. Any other
exception fails the test. The identities:

- ``gradient`` = ∂logit/∂x; ``input_t_gradient`` = x ⊙ ∂logit/∂x; ``smoothgrad`` with
  ``noise_scale=0`` = the gradient; ``integrated_gradients`` = x ⊙ the mean gradient at the
  left Riemann points k/steps·x (reference 0), the logit chosen at x.
- ``lrp.z`` (and ``lrp`` with ``rule="Z"``, ``lrp.epsilon`` with ε = 1e-9) = Input×Gradient on
  piecewise-linear ReLU nets, canonized BatchNorm or not (the z-rule with bias is the gradient
  times the input). With ``(x - mean) / std`` in ``forward`` relevance passes the
  preprocessing unchanged: the map is x_n ⊙ ∂logit/∂x_n at x_n = (x − mean)/std.
- ``lrp.z_IB``, ``lrp.epsilon_IB`` (ε = 1e-15), ``lrp.w_square``, ``lrp.flat``: the map sums
  to the selected logit (conservation) on nets of kernel layers, canonized BatchNorm, ReLU,
  pooling, adds, concatenation and reshapes; checked in float64, and only where the forward
  pass has no exact zero the rule would divide relevance by (then it is lost by definition).
- ``deep_lift``: Σ map = f(x)_c − f(0)_c (summation to delta).
- The ``*_flat`` presets differ from the plain ones and ``deep_taylor.bounded`` from
  ``deep_taylor`` (the input-layer rule applies, also after in-forward preprocessing).
- Every map: finite, with the input's shape, dtype and device; the analysis leaves the
  model's parameters and buffers as they were.

Then the variants must give the plain model's map: a compiled model, channels_last,
float64, the default and the ``output_key``-selected output of tuple/dict models, the bare
in-place statements against the same network written out of place, the model under
activation checkpointing (reentrant or not), an analysis inside a bfloat16 autocast region
and, where CUDA is available, VGG-16-BN and ResNet-18 on the GPU (also compiled by
inductor) against the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from zoo import (
    ZOO,
    AttentionGate,
    Checkpointed,
    Head,
    MBConv,
    compiled,
    out_of_place_twin,
)

import lit_explain as lx

MODELS = tuple(ZOO)
ANALYZERS = tuple(sorted(lx.analyzers))

# Nets whose every operation is piecewise linear with a z-rule meaning (kernel layers,
# BatchNorm merged into the kernel before it, ReLU, max/avg pooling, adds, cat, interpolate,
# transposed conv, dropout). Not densenet: its pre-activation BatchNorms follow no kernel
# layer and keep a rule of their own (bn_layer_rule), so LRP-z is not Input×Gradient there.
# leaky_relu: the identity rule on a LeakyReLU (AttnLRP) is its gradient per unit of input
# (y/x = the slope), so LRP-z is Input×Gradient there too.
PIECEWISE_LINEAR = {"vgg16_bn", "resnet18", "bottleneck", "unet", "audio1d",
                    "inplace_statements", "tuple_output", "dict_output", "float64",
                    "channels_last", "leaky_relu", "inception", "squeezenet", "hrnet",
                    "res2net"}
# ... and whose relevance is conserved by the bias-free rules: every BatchNorm follows a
# kernel layer (canonized), no scaling or masking statements. normalized_input: relevance
# passes (x - mean) / std unchanged; mobilenet_v2, leaky_relu: the identity rule on ReLU6
# and LeakyReLU (in place) passes it unchanged.
CONSERVING = {"vgg16_bn", "resnet18", "bottleneck", "unet", "audio1d", "tuple_output",
              "dict_output", "float64", "channels_last", "normalized_input", "mobilenet_v2",
              "leaky_relu", "inception", "squeezenet", "hrnet", "res2net"}
CONSERVATION = ("lrp.z_IB", "lrp.epsilon_IB", "lrp.w_square", "lrp.flat")
Z_RULE = ("lrp.z", "lrp", "lrp.epsilon")

# Analyzers whose every non-linearity needs a rule of the method (they refuse what they
# have no rule for); the gradient family covers everything here, and the LRP family gives
# every elementwise non-linearity AttnLRP's identity rule, normalisations and products
# theirs. DeepLIFT's rescale rule covers elementwise non-linearities only.
RULE_BASED = {name for name in ANALYZERS if name.startswith("pattern.")
              } | {"deconvnet", "guided_backprop"}
# model → [(names the operation may go by, the module type it runs in), ...]: the refusals
# allowed (ReLU-only methods; DeepLIFT on normalisations and products).
UNSUPPORTED = {
    "mobilenet_v2": [(("hardtanh", "relu6"), nn.ReLU6)],
    "leaky_relu": [(("leaky_relu",), nn.LeakyReLU)],
    "convnext": [(("group_norm",), nn.GroupNorm)],
    "efficientnet": [(("silu",), nn.SiLU)],
    "attention_unet": [(("sigmoid",), nn.Sigmoid)],
}
DEEP_LIFT_UNSUPPORTED = {
    "convnext": [(("group_norm",), nn.GroupNorm)],
    "efficientnet": [(("mul",), MBConv)],
    "attention_unet": [(("mul",), AttentionGate)],
}
# PatternComputer may refuse transposed convolutions at fit time (issue 10, item 9).
PATTERN_REFUSALS = {"unet": [(("conv_transpose",), nn.ConvTranspose2d)]}

DIFFERENT_INPUT_LAYER = {"lrp.sequential_preset_a_flat": "lrp.sequential_preset_a",
                         "lrp.sequential_preset_b_flat": "lrp.sequential_preset_b",
                         "deep_taylor.bounded": "deep_taylor"}
SAME_AS = {"lrp.alpha_beta": "lrp.alpha_2_beta_1",  # alpha=2
           "lrp.sequential_preset_b_flat_until_idx": "lrp.sequential_preset_b_flat"}

KWARGS: dict[str, dict] = {
    "lrp": {"rule": "Z"},
    "lrp.epsilon": {"epsilon": 1e-9},
    "lrp.epsilon_IB": {"epsilon": 1e-9},
    "lrp.alpha_beta": {"alpha": 2.0},
    "deep_taylor.bounded": {"low": -4.0, "high": 4.0},
    "integrated_gradients": {"steps": 2},
    "smoothgrad": {"augment_by_n": 2, "noise_scale": 0.0},
}
IG_STEPS = KWARGS["integrated_gradients"]["steps"]


# The models, their patterns and their maps, each made once per session ----------------------

@functools.cache
def zoo(name: str) -> tuple[nn.Module, Tensor]:
    return ZOO[name]()


def default_output(output: object) -> Tensor:
    """The logits of a model output: the first tensor of a tuple, ``"logits"`` of a dict."""
    if isinstance(output, dict):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class Refused(Exception):
    """A fit-time refusal, kept in the caches like an analysis refusal."""


@functools.cache
def patterns(name: str) -> dict[str, Tensor]:
    model, x = zoo(name)
    generator = torch.Generator().manual_seed(0)
    batches = [x + 0.1 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
               for _ in range(4)]
    return lx.PatternComputer(model).fit(batches, progress=False)


def kwargs_for(analyzer: str, model_name: str | None, prefix: str = "") -> dict:
    """The analyzer's keywords; pattern analyzers get the patterns of zoo model
    ``model_name``, their module paths prefixed with ``prefix`` (for a wrapping model)."""
    kwargs = dict(KWARGS.get(analyzer, {}))
    if analyzer.startswith("pattern.") and model_name is not None:
        kwargs["patterns"] = {prefix + path: p for path, p in patterns(model_name).items()}
    return kwargs


def run(analyzer: str, model: nn.Module, x: Tensor, patterns_of: str | None = None,
        prefix: str = "", **extra) -> Tensor:
    """The analyzer's map; the analysis must leave every parameter and buffer unchanged."""
    before = [t.clone() for t in model.state_dict().values()]
    try:
        kwargs = {**kwargs_for(analyzer, patterns_of, prefix), **extra}
        return lx.create_analyzer(analyzer, model, **kwargs).analyze(x)
    finally:
        after = list(model.state_dict().values())
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), \
            "the analysis changed the model's parameters or buffers"


@functools.cache
def zoo_map(model_name: str, analyzer: str) -> Tensor | lx.NotAnalyzableModelError:
    """The map of a zoo model, or the refusal (any other exception propagates)."""
    model, x = zoo(model_name)
    try:
        return run(analyzer, model, x, patterns_of=model_name)
    except lx.NotAnalyzableModelError as error:
        return error


# Independent references (plain autograd) -----------------------------------------------------

def logits_and_choice(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        logits = default_output(model(x)).reshape(len(x), -1)
    return logits, logits.argmax(dim=1)


def gradient(model: nn.Module, point: Tensor, choice: Tensor) -> Tensor:
    point = point.detach().requires_grad_(True)
    logits = default_output(model(point)).reshape(len(point), -1)
    (grad,) = torch.autograd.grad(logits.gather(1, choice[:, None]).sum(), point)
    return grad


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def per_sample_sum(attribution: Tensor) -> Tensor:
    return attribution.reshape(len(attribution), -1).sum(dim=1)


class ZeroFinder(TorchFunctionMode):
    """Watch a forward pass for the two places where a conserving rule must lose relevance:
    a kernel layer whose bias-free output ``Wx`` is exactly 0 (with a bias, its own or a
    fused BatchNorm's, the output is not, and the ``_IB`` rules have nothing to divide), and
    an exact 0 in the output of a pooling, add or interpolation (the z-rule there has
    nothing to divide, yet w² and flat send relevance to every position)."""

    KERNELS = {F.linear, torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d,
               torch.conv_transpose2d, torch.conv_transpose3d}
    LINEAR = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
              torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__,
              F.interpolate}

    def __init__(self) -> None:
        super().__init__()
        self.kernel_zero = self.linear_zero = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.KERNELS:  # (a BatchNorm after it gives the fused layer a bias)
            rest = {k: v for k, v in kwargs.items() if k != "bias"}
            z = func(args[0], args[1], None, *args[3:], **rest)
            self.kernel_zero |= bool((z == 0).any())
        elif func in self.LINEAR and isinstance(out, Tensor):
            self.linear_zero |= bool((out == 0).any())
        return out


def check_conservation(model_name: str, analyzer: str) -> None:
    """Σ map = the selected logit, checked in float64 (the ``_IB`` rules divide by bias-free
    outputs that can be tiny: float32 cancels), where the rule promises it: no exact zero
    the rule would have to divide relevance by (see :class:`ZeroFinder`)."""
    model, x = zoo(model_name)
    model, x = copy.deepcopy(model).double(), x.double()
    finder = ZeroFinder()
    with finder, torch.no_grad():
        model(x)
    if (finder.kernel_zero and analyzer in ("lrp.z_IB", "lrp.epsilon_IB")) or (
            finder.linear_zero and analyzer in ("lrp.w_square", "lrp.flat")):
        return  # relevance is lost by the rule's definition; no identity to check
    extra = {"epsilon": 1e-15} if analyzer == "lrp.epsilon_IB" else {}
    result = run(analyzer, model, x, **extra)
    logits, choice = logits_and_choice(model, x)
    selected = logits.gather(1, choice[:, None])[:, 0]
    torch.testing.assert_close(per_sample_sum(result), selected, rtol=1e-4,
                               atol=1e-4 * float(selected.abs().max()))


def check_refusal(error: Exception, model: nn.Module, allowed: dict, model_name: str) -> None:
    """``error`` names one of the operations allowed for the model and the path of a module
    of the type it runs in."""
    assert model_name in allowed, f"refused a model it must analyze: {error}"
    message = str(error)
    for names, module_type in allowed[model_name]:
        paths = [path for path, m in model.named_modules()
                 if isinstance(m, module_type) and path]
        if any(name in message for name in names) and any(
                re.search(rf"'{re.escape(path)}'", message) for path in paths):
            return
    raise AssertionError(f"the message names none of the operations and module paths "
                         f"allowed ({allowed[model_name]}): {message}")


def check_identity(model_name: str, analyzer: str, result: Tensor) -> None:
    """The method's identity for ``result``, the map of ``analyzer`` on zoo model ``model_name``."""
    model, x = zoo(model_name)
    assert result.shape == x.shape and result.dtype == x.dtype and result.device == x.device
    assert bool(torch.isfinite(result).all()), "the map is not finite"
    logits, choice = logits_and_choice(model, x)
    selected = logits.gather(1, choice[:, None])[:, 0]

    if analyzer == "input":
        close(result, x)
    elif analyzer in ("gradient", "smoothgrad"):  # smoothgrad: noise_scale=0
        close(result, gradient(model, x, choice))
    elif analyzer == "input_t_gradient":
        close(result, x * gradient(model, x, choice))
    elif analyzer == "integrated_gradients":
        points = [k / IG_STEPS * x for k in range(IG_STEPS)]  # left Riemann sum from 0
        mean = sum(gradient(model, p, choice) for p in points) / IG_STEPS
        close(result, x * mean)
    elif analyzer == "deep_lift":
        with torch.no_grad():
            at_zero = default_output(model(torch.zeros_like(x))).reshape(len(x), -1)
        delta = selected - at_zero.gather(1, choice[:, None])[:, 0]
        torch.testing.assert_close(per_sample_sum(result), delta, rtol=1e-4, atol=1e-5)
    elif analyzer in Z_RULE and model_name == "normalized_input":
        normalized = (x - model.mean) / model.std
        expected = normalized * gradient(model.body, normalized, choice)
        close(result, expected)
    elif analyzer in Z_RULE and model_name in PIECEWISE_LINEAR:
        close(result, x * gradient(model, x, choice))
    elif analyzer in CONSERVATION and model_name in CONSERVING:
        check_conservation(model_name, analyzer)
    elif analyzer in SAME_AS:
        other = zoo_map(model_name, SAME_AS[analyzer])
        assert isinstance(other, Tensor), f"{SAME_AS[analyzer]} refused: {other}"
        close(result, other)
    elif analyzer == "pattern.net":
        # a signal estimate on the scale of the input (times the logit it starts from)
        bound = 1e3 * float(x.abs().max()) * max(1.0, float(selected.abs().max()))
        assert float(result.abs().max()) <= bound, \
            f"pattern.net's signal reaches {float(result.abs().max()):.3g}"
    if analyzer in DIFFERENT_INPUT_LAYER:
        plain = zoo_map(model_name, DIFFERENT_INPUT_LAYER[analyzer])
        if isinstance(plain, Tensor):
            assert not torch.allclose(result, plain, rtol=1e-3, atol=1e-6), \
                f"{analyzer} equals {DIFFERENT_INPUT_LAYER[analyzer]}: no input-layer rule"


@pytest.mark.parametrize(("model_name", "analyzer"), [
    pytest.param(m, a, id=f"{m}-{a}") for m in MODELS for a in ANALYZERS])
def test_zoo(model_name: str, analyzer: str) -> None:
    model, _ = zoo(model_name)
    if analyzer.startswith("pattern."):
        try:
            patterns(model_name)
        except lx.NotAnalyzableModelError as error:  # a fit-time refusal
            check_refusal(error, model, PATTERN_REFUSALS, model_name)
            return
    result = zoo_map(model_name, analyzer)
    if isinstance(result, lx.NotAnalyzableModelError):
        allowed = {**UNSUPPORTED, **(PATTERN_REFUSALS if analyzer.startswith("pattern.")
                                     else {})} if analyzer in RULE_BASED else (
            DEEP_LIFT_UNSUPPORTED if analyzer == "deep_lift" else {})
        check_refusal(result, model, allowed, model_name)
        return
    check_identity(model_name, analyzer, result)


# Variants: the same network in another form gives the same map -----------------------------

def _contiguous() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
    model, x = zoo("channels_last")
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    return model, x, plain, x.contiguous(), {}


def _single_precision() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
    model, x = zoo("float64")
    return model, x, copy.deepcopy(model).float(), x.float(), {}


def _compiled() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
    model, x = zoo("resnet18")
    return compiled(model), x, model, x, {}


def _on_cuda(name: str, compile_it: bool = False):
    @functools.cache  # one copy (and one compilation) for every analyzer
    def make() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
        model, x = zoo(name)
        on_cuda, x_cuda = copy.deepcopy(model).cuda(), x.cuda()
        if compile_it:  # torch's default backend (inductor), compiled by a first call
            on_cuda = torch.compile(on_cuda)
            on_cuda(x_cuda)
        return on_cuda, x_cuda, model, x, {}

    return make


def _checkpointed(reentrant: bool):
    def make() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
        model, x = zoo("resnet18")
        return Checkpointed(model, reentrant).eval(), x, model, x, {}

    return make


def _same(name: str):
    def make() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
        model, x = zoo(name)
        return model, x, model, x, {}

    return make


def _head(name: str, key: int | str, explicit: bool):
    def make() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
        model, x = zoo(name)
        return model, x, Head(model, key).eval(), x, {"output_key": key} if explicit else {}

    return make


def _out_of_place() -> tuple[nn.Module, Tensor, nn.Module, Tensor, dict]:
    model, x = zoo("inplace_statements")
    return model, x, out_of_place_twin(model), x, {}


# variant → (a maker of (model, x, the plain model, its input, analyzer keywords), the zoo
# model, the prefix of the zoo model's module paths in the plain model). Pattern analyzers
# get the patterns fitted on the zoo model; a compiled model gets those of the module it
# compiles (analysed through it), a wrapper (Head, the out-of-place twin) has them under
# "model.".
VARIANTS = {
    "compiled": (_compiled, "resnet18", ""),
    "channels_last": (_contiguous, "channels_last", ""),
    "float64": (_single_precision, "float64", ""),
    "tuple_output_default": (_head("tuple_output", 0, False), "tuple_output", "model."),
    "tuple_output_aux": (_head("tuple_output", 1, True), "tuple_output", "model."),
    "dict_output_default": (_head("dict_output", "logits", False), "dict_output", "model."),
    "dict_output_aux": (_head("dict_output", "aux", True), "dict_output", "model."),
    "inplace_statements": (_out_of_place, "inplace_statements", "model."),
    # run under torch.utils.checkpoint: checkpoints run directly during an analysis
    "checkpoint": (_checkpointed(False), "resnet18", ""),
    "checkpoint_reentrant": (_checkpointed(True), "resnet18", ""),
    # analysed inside a torch.autocast region (Lightning's "bf16-mixed"): autocast is off in
    # an analysis, the map the float32 one
    "autocast": (_same("resnet18"), "resnet18", ""),
}
# the prefix of the zoo model's module paths in the variant's model (for its patterns)
VARIANT_PREFIX = {"checkpoint": "model.", "checkpoint_reentrant": "model."}
CONTEXTS = {"autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
if torch.cuda.is_available():  # with torch's default TF32 convolutions
    VARIANTS |= {"cuda_vgg16_bn": (_on_cuda("vgg16_bn"), "vgg16_bn", ""),
                 "cuda_resnet18": (_on_cuda("resnet18"), "resnet18", ""),
                 "cuda_compiled": (_on_cuda("resnet18", compile_it=True), "resnet18", "")}
CUDA = tuple(v for v in VARIANTS if v.startswith("cuda"))
RTOL = {"float64": 1e-3, "cuda_vgg16_bn": 1e-2, "cuda_resnet18": 1e-2, "cuda_compiled": 1e-2}


def _outcome(analyzer: str, model: nn.Module, x: Tensor, patterns_of: str, prefix: str = "",
             **extra):
    try:
        return run(analyzer, model, x, patterns_of=patterns_of, prefix=prefix, **extra)
    except lx.NotAnalyzableModelError as error:
        return error


def variant_outcomes(variant: str, analyzer: str) -> tuple[Tensor | Exception, Tensor | Exception,
                                                          Tensor]:
    """The analyzer's outcome (map or refusal) on the plain model and on the variant, and
    the variant's input."""
    make, zoo_name, prefix = VARIANTS[variant]
    model, x, plain, plain_x, extra = make()
    expected = _outcome(analyzer, plain, plain_x, zoo_name, prefix)
    with CONTEXTS.get(variant, contextlib.nullcontext)():
        actual = _outcome(analyzer, model, x, zoo_name, VARIANT_PREFIX.get(variant, ""), **extra)
    return expected, actual, x


@pytest.mark.parametrize(("variant", "analyzer"), [
    pytest.param(v, a, id=f"{v}-{a}") for v in VARIANTS for a in ANALYZERS])
def test_variant_gives_the_plain_models_map(variant: str, analyzer: str) -> None:
    expected, actual, x = variant_outcomes(variant, analyzer)
    if isinstance(expected, lx.NotAnalyzableModelError):
        assert isinstance(actual, lx.NotAnalyzableModelError), \
            f"the plain model is refused ({expected}), the {variant} one is not"
        return
    assert isinstance(actual, Tensor), f"the plain model is analyzed, the {variant} one " \
                                       f"refused: {actual}"
    assert actual.shape == x.shape and actual.dtype == x.dtype and actual.device == x.device
    if analyzer == "random" and variant in ("float64", *CUDA):
        return  # the noise is drawn in the input's dtype and on its device
    close(actual.to(expected.device, expected.dtype), expected, rtol=RTOL.get(variant, 1e-4))


REPLAYABLE = ("guided_backprop", "deconvnet", "lrp.z", "lrp.epsilon", "lrp", "lrp.epsilon_IB",
              "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0_IB", "lrp.z_plus", "lrp.w_square",
              "lrp.flat", "lrp.sequential_preset_a", "lrp.sequential_preset_b_flat",
              "deep_taylor", "deep_taylor.bounded")


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("analyzer", REPLAYABLE)
def test_a_replayed_analysis_gives_the_full_analysis_map(model_name: str, analyzer: str) -> None:
    """The second analysis of a model and input signature replays the first one's plan where
    its rules depend each on its call alone (see lit_explain.analyzers.replay): the same map.
    Every model of the zoo that an analyzer explains is replayed, also one of in-place
    statements whose results it drops (where each call's tensors came from is checked: an
    in-place call's target is its own output)."""
    model, x = ZOO[model_name]()
    kwargs = {"lrp": {"rule": "Epsilon", "canonize": False},
              "deep_taylor.bounded": {"low": -4.0, "high": 4.0}}.get(analyzer, {})
    explainer = lx.create_analyzer(analyzer, model, **kwargs)
    try:
        first = explainer.analyze(x)
    except lx.NotAnalyzableModelError:
        return
    second = explainer.analyze(x)
    assert not explainer.replayed or explainer._plan is not None
    torch.testing.assert_close(second, first, rtol=1e-6, atol=1e-6 * float(first.abs().max()))
    assert explainer.replayed
    third = explainer.analyze(x * 0.5)  # the same signature, another input: the plan holds
    expected = lx.create_analyzer(analyzer, model, **kwargs).analyze(x * 0.5)
    torch.testing.assert_close(third, expected, rtol=1e-6, atol=1e-6 * float(
        expected.abs().max()))
