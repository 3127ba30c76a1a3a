"""Which rule each layer gets: rule specifications, layer conditions and the named presets.

A rule specification (the ``rule=`` of :class:`~.analyzer.LRP`) is, as in iNNvestigate,

- a rule name (``"Epsilon"``, see :data:`~.rules.RULES`), a :class:`~.rules.Rule` object or
  a rule class (instantiated with its defaults): every kernel layer gets it;
- a list of those: the i-th kernel layer of the forward pass (counting from 0 at the input)
  gets the i-th rule;
- a list of ``(condition, rule)`` pairs: a kernel layer gets the rule of the first condition
  it meets. A condition is a callable taking the :class:`~..operations.OperationCall` (with
  ``module``, ``module_path``, ``layer_index``, ``is_input_layer``) and returning a bool, or
  an ``nn.Module`` subclass, which the layer's module must be an instance of.

Presets map layer kinds to rules as data: :class:`Preset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NotAnalyzableModelError
from ..operations import OperationCall
from ..validation import is_finite_number
from .rules import RULES, AlphaBetaRule, BoundedRule, EpsilonRule, FlatRule, Rule

Condition = Callable[[OperationCall], bool] | type[nn.Module]
RuleSpec = str | Rule | type[Rule]

_CONVOLUTIONS = {torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d,
                 torch.conv_transpose2d, torch.conv_transpose3d}


def is_dense_layer(call: OperationCall) -> bool:
    """A fully connected layer (``nn.Linear``, ``F.linear``, or a matrix product with a model
    weight such as ``x @ self.W``)."""
    return call.func is F.linear or call.weight_index is not None


def is_conv_layer(call: OperationCall) -> bool:
    """A convolution or transposed convolution, 1d to 3d."""
    return call.func in _CONVOLUTIONS


def is_input_layer(call: OperationCall) -> bool:
    """The first kernel layer, fed by the model input through reshapes only."""
    return call.is_input_layer


def to_rule(spec: Any, name: str = "rule") -> Rule:
    """A :class:`Rule` from a rule name, object or class; ``(low, high)`` is z^B."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, type) and issubclass(spec, Rule):
        return spec()
    if isinstance(spec, str):
        if spec not in RULES:
            raise ValueError(f"{name}={spec!r} is not a rule name; valid names: {sorted(RULES)}")
        return RULES[spec]
    if isinstance(spec, tuple) and len(spec) == 2 and all(is_finite_number(v) for v in spec):
        low, high = spec
        return BoundedRule(float(low), float(high))
    raise TypeError(f"{name}={spec!r} is not a rule: give a rule name ({sorted(RULES)}), a "
                    f"Rule object or class, or (low, high) for the bounded z^B rule")


def _is_condition_pair(item: Any) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and callable(item[0])
            and not isinstance(item[0], Rule)
            and not (isinstance(item[0], type) and issubclass(item[0], Rule)))


def _condition_holds(condition: Condition, call: OperationCall) -> bool:
    if isinstance(condition, type):
        return isinstance(call.module, condition)
    return bool(condition(call))


class RuleMap:
    """Resolve a rule specification once, then answer which rule a kernel call gets.

    Parameters
    ----------
    rule:
        The rule specification (see the module docstring).
    input_layer_rule:
        Rule of the input layer (a rule spec, or ``(low, high)`` for z^B), or ``None``.
    until_layer_idx, until_layer_rule:
        Kernel layers ``0 .. until_layer_idx`` get ``until_layer_rule`` (first priority).
    """

    def __init__(self, rule: RuleSpec | Sequence[Any], input_layer_rule: Any = None,
                 until_layer_idx: int | None = None, until_layer_rule: Any = None) -> None:
        self.conditional: list[tuple[Condition, Rule]] | None = None
        self.per_layer: list[Rule] | None = None
        self.single: Rule | None = None
        if isinstance(rule, (list, tuple)) and not (
                isinstance(rule, tuple) and len(rule) == 2
                and all(isinstance(v, (int, float)) for v in rule)):
            if not rule:
                raise ValueError("rule=[] gives no rule; give at least one")
            if all(_is_condition_pair(item) for item in rule):
                self.conditional = [(c, to_rule(r)) for c, r in rule]
            else:
                self.per_layer = [to_rule(r) for r in rule]
        else:
            self.single = to_rule(rule)
        self.input_layer_rule = (None if input_layer_rule is None
                                 else to_rule(input_layer_rule, "input_layer_rule"))
        if until_layer_idx is not None and (isinstance(until_layer_idx, bool) or not isinstance(
                until_layer_idx, int) or until_layer_idx < 0):
            raise ValueError(f"until_layer_idx={until_layer_idx!r} is not valid; expected an "
                             f"integer >= 0 or None")
        self.until_layer_idx = until_layer_idx
        self.until_layer_rule = (None if until_layer_rule is None
                                 else to_rule(until_layer_rule, "until_layer_rule"))

    def rules(self) -> list[Rule]:
        """Every rule this map can hand out."""
        candidates = [self.single, self.input_layer_rule, self.until_layer_rule,
                      *(self.per_layer or []), *(rule for _, rule in self.conditional or [])]
        return [rule for rule in candidates if rule is not None]

    def __call__(self, call: OperationCall) -> Rule:
        index = call.layer_index
        if self.until_layer_rule is not None and self.until_layer_idx is not None \
                and index is not None and index <= self.until_layer_idx:
            return self.until_layer_rule
        if self.input_layer_rule is not None and call.is_input_layer:
            return self.input_layer_rule
        if self.single is not None:
            return self.single
        if self.per_layer is not None:
            if index is None or index >= len(self.per_layer):
                raise ValueError(f"rule= lists {len(self.per_layer)} rules, one per kernel "
                                 f"layer, but the model has more: {call.where()} is kernel "
                                 f"layer {index}")
            return self.per_layer[index]
        for condition, rule in self.conditional or []:
            if _condition_holds(condition, call):
                return rule
        raise NotAnalyzableModelError(f"no rule condition holds for {call.where()}; add a "
                                      f"(condition, rule) pair that covers it")


@dataclass(frozen=True)
class Preset:
    """A rule per kernel-layer kind: the idea of iNNvestigate's sequential presets.

    Attributes
    ----------
    dense, conv:
        Rules of fully connected and of convolution layers.
    input_layer:
        Rule of the input layer, or ``None`` to treat it like the others.
    """

    dense: Rule
    conv: Rule
    input_layer: Rule | None = None

    def rules(self) -> list[tuple[Condition, Rule]]:
        """The preset as a conditional rule list."""
        return [(is_dense_layer, self.dense), (is_conv_layer, self.conv)]


def sequential_preset(conv: Rule, epsilon: float, flat_input: bool = False) -> Preset:
    """Montavon et al. 2019 / Kohlbrenner et al. 2020: ε on dense layers, ``conv`` on
    convolutions, and optionally the Flat rule on the input layer."""
    return Preset(dense=EpsilonRule(epsilon), conv=conv,
                  input_layer=FlatRule() if flat_input else None)


ALPHA_1_BETA_0 = AlphaBetaRule(1.0, 0.0)
ALPHA_2_BETA_1 = AlphaBetaRule(2.0, 1.0)
