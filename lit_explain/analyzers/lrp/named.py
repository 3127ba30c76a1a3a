"""iNNvestigate's named LRP analyzers: :class:`~.analyzer.LRP` with the rules their names
fix (``lrp.z``, ``lrp.epsilon``, ``lrp.alpha_2_beta_1``, the sequential presets, ...)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..registry import register
from ..validation import check_number
from .analyzer import LRP
from .presets import ALPHA_1_BETA_0, ALPHA_2_BETA_1, RuleSpec, sequential_preset
from .rules import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    Rule,
    WSquareRule,
    ZPlusFastRule,
    ZPlusRule,
    ZRule,
)


class _FixedRuleLRP(LRP):
    """An LRP analyzer whose kernel-layer rule is fixed by its name.

    Parameters
    ----------
    input_layer_rule:
        As for :class:`LRP`: a rule for the input layer, or ``(low, high)`` for z^B.
    """

    kernel_rule: ClassVar[Rule]

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, rule=self.kernel_rule,
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.z")
class LRPZ(_FixedRuleLRP):
    """LRP-z on every kernel layer (:class:`ZRule`): ``R_x = x ⊙ Jᵀ(R_y / z)``."""

    kernel_rule = ZRule()


@register("lrp.z_IB")
class LRPZIgnoreBias(_FixedRuleLRP):
    """LRP-z without the bias in the denominator: relevance is conserved."""

    kernel_rule = ZRule(bias=False)


@register("lrp.w_square")
class LRPWSquare(_FixedRuleLRP):
    """The w²-rule on every kernel layer (:class:`WSquareRule`)."""

    kernel_rule = WSquareRule()


@register("lrp.flat")
class LRPFlat(_FixedRuleLRP):
    """The Flat rule on every kernel layer (:class:`FlatRule`)."""

    kernel_rule = FlatRule()


@register("lrp.alpha_2_beta_1")
class LRPAlpha2Beta1(_FixedRuleLRP):
    """LRP-α2β1, ``b⁺`` in ``z⁺`` and ``b⁻`` in ``z⁻`` (:class:`AlphaBetaRule`)."""

    kernel_rule = ALPHA_2_BETA_1


@register("lrp.alpha_2_beta_1_IB")
class LRPAlpha2Beta1IgnoreBias(_FixedRuleLRP):
    """LRP-α2β1 without bias."""

    kernel_rule = AlphaBetaRule(2.0, 1.0, bias=False)


@register("lrp.alpha_1_beta_0")
class LRPAlpha1Beta0(_FixedRuleLRP):
    """LRP-α1β0, ``b⁺`` in ``z⁺`` (:class:`AlphaBetaRule`)."""

    kernel_rule = ALPHA_1_BETA_0


@register("lrp.alpha_1_beta_0_IB")
class LRPAlpha1Beta0IgnoreBias(_FixedRuleLRP):
    """LRP-α1β0 without bias."""

    kernel_rule = AlphaBetaRule(1.0, 0.0, bias=False)


@register("lrp.z_plus")
class LRPZPlus(_FixedRuleLRP):
    """The z⁺-rule on every kernel layer (:class:`ZPlusRule`: α1β0 without bias)."""

    kernel_rule = ZPlusRule()


@register("lrp.z_plus_fast")
class LRPZPlusFast(_FixedRuleLRP):
    """The z⁺-rule for non-negative inputs, ``x ⊙ Jᵀ_{W⁺}(R / xW⁺)`` (:class:`ZPlusFastRule`)."""

    kernel_rule = ZPlusFastRule()


@register("lrp.epsilon")
class LRPEpsilon(LRP):
    """LRP-ε on every kernel layer (:class:`EpsilonRule`).

    Parameters
    ----------
    epsilon:
        The stabiliser ε (iNNvestigate's default 1e-7).
    bias:
        Whether the bias is part of the denominator.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7, bias: bool = True,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, rule=EpsilonRule(epsilon, bias),
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.epsilon_IB")
class LRPEpsilonIgnoreBias(LRP):
    """LRP-ε without the bias in the denominator."""

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, rule=EpsilonRule(epsilon, bias=False),
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.alpha_beta")
class LRPAlphaBeta(LRP):
    """LRP-αβ on every kernel layer (:class:`AlphaBetaRule`), α − β = 1.

    Parameters
    ----------
    alpha, beta:
        Weights of the positive and negative contributions; give one and the other follows
        from α − β = 1.
    bias:
        Whether ``b⁺`` joins ``z⁺`` and ``b⁻`` joins ``z⁻``.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 alpha: float | None = None, beta: float | None = None, bias: bool = True,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        if alpha is None and beta is None:
            raise ValueError("lrp.alpha_beta needs alpha or beta (alpha - beta = 1)")
        # the values given are checked before the other is derived from them, so that an
        # error names the user's value
        if alpha is not None:
            check_number("alpha", alpha, at_least=1)
        if beta is not None:
            check_number("beta", beta, at_least=0)
        alpha = float(beta) + 1.0 if alpha is None else float(alpha)
        beta = alpha - 1.0 if beta is None else float(beta)
        super().__init__(model, neuron_selection_mode, rule=AlphaBetaRule(alpha, beta, bias),
                         input_layer_rule=input_layer_rule, **reverse)


class _SequentialPreset(LRP):
    conv_rule: Rule
    flat_input: bool = False

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 0.1, **reverse: Any) -> None:
        preset = sequential_preset(self.conv_rule, epsilon, self.flat_input)
        super().__init__(model, neuron_selection_mode, rule=preset.rules(),
                         input_layer_rule=preset.input_layer, **reverse)


@register("lrp.sequential_preset_a")
class LRPSequentialPresetA(_SequentialPreset):
    """ε (default 0.1) on dense layers, α1β0 on convolutions (Montavon et al. 2019)."""

    conv_rule = ALPHA_1_BETA_0


@register("lrp.sequential_preset_b")
class LRPSequentialPresetB(_SequentialPreset):
    """ε (default 0.1) on dense layers, α2β1 on convolutions (Montavon et al. 2019)."""

    conv_rule = ALPHA_2_BETA_1


@register("lrp.sequential_preset_a_flat")
class LRPSequentialPresetAFlat(_SequentialPreset):
    """Preset A with the Flat rule on the input layer."""

    conv_rule = ALPHA_1_BETA_0
    flat_input = True


@register("lrp.sequential_preset_b_flat")
class LRPSequentialPresetBFlat(_SequentialPreset):
    """Preset B with the Flat rule on the input layer."""

    conv_rule = ALPHA_2_BETA_1
    flat_input = True


@register("lrp.sequential_preset_b_flat_until_idx")
class LRPSequentialPresetBFlatUntilIdx(LRP):
    """Preset B with the Flat rule on the input layer and on kernel layers
    ``0 .. until_layer_idx`` (``None``: the input layer only).

    Parameters
    ----------
    epsilon:
        ε of the dense layers.
    until_layer_idx:
        Index of the last kernel layer (0: the first) that gets the Flat rule.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 0.1, until_layer_idx: int | None = None,
                 **reverse: Any) -> None:
        preset = sequential_preset(ALPHA_2_BETA_1, epsilon, flat_input=True)
        super().__init__(model, neuron_selection_mode, rule=preset.rules(),
                         input_layer_rule=preset.input_layer, until_layer_idx=until_layer_idx,
                         until_layer_rule=FlatRule(), **reverse)
