"""Metrics and drift of the probe maps, for ExplainCallback.

Both use :mod:`lit_explain.metrics` (torchmetrics), so under DDP every rank evaluates its own
probe samples and ``compute()`` reduces the states across ranks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..analyzers.validation import check_choice
from ..metrics import create_metric, localization_metrics, metrics

DRIFT_REFERENCES = ("previous", "first")
#: Metrics that the ``metrics`` option takes (drift has its own option).
MAP_METRICS = tuple(sorted(name for name in metrics if name != "attribution_drift"))
#: Localization metrics logged by default when the callback has masks (``mask_key``) and
#: ``metrics`` names none (top-k intersection needs a ``k`` that fits the images: name it).
DEFAULT_LOCALIZATION = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game",
                        "attribution_localisation", "shortcut_score")


def _takes_model(name: str) -> bool:
    return "model" in inspect.signature(metrics[name].__init__).parameters


def normalize_metrics(spec: Sequence[str] | Mapping[str, Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """Check metric names; return ``{name: kwargs}``."""
    specs = {spec: {}} if isinstance(spec, str) else (
        dict(spec) if isinstance(spec, Mapping) else {name: {} for name in spec})
    for name in specs:
        if name not in MAP_METRICS:
            raise KeyError(f"unknown metric {name!r}; valid names: {list(MAP_METRICS)} "
                           f"(drift has its own option, drift=)")
    return {name: dict(kwargs or {}) for name, kwargs in specs.items()}


def normalize_drift(spec: Sequence[str] | str | None) -> tuple[str, ...]:
    """Check the drift references; return them as a tuple."""
    references = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    for reference in references:
        check_choice("drift", reference, DRIFT_REFERENCES)
    return references


class MapMetrics:
    """The configured metrics of one analyzer's maps, built once for the model."""

    def __init__(self, specs: Mapping[str, Mapping[str, Any]], model: nn.Module) -> None:
        self.metrics = {name: create_metric(name, model, **kwargs) if _takes_model(name)
                        else create_metric(name, **kwargs) for name, kwargs in specs.items()}

    def evaluate(self, inputs: Tensor, maps: Tensor, targets: Tensor | None,
                 masks: Tensor | None = None
                 ) -> tuple[dict[str, float], dict[str, dict[str, Tensor]]]:
        """Scalars ``{metric[/part]: value}`` and curves ``{metric: {label: curve}}``."""
        scalars: dict[str, float] = {}
        curves: dict[str, dict[str, Tensor]] = {}
        for name, metric in self.metrics.items():
            metric.reset()
            metric.to(inputs.device)
            if name in localization_metrics:
                if masks is None:
                    raise ValueError(f"metric {name!r} needs masks: set mask_key")
                metric.update(maps, masks.to(maps.device))
            elif _takes_model(name):
                metric.update(inputs, maps, targets)
            else:
                metric.update(maps)
            if name in localization_metrics and int(metric.count) == 0:
                continue  # no probe sample has a mask to score: nothing to log
            value = metric.compute()
            if isinstance(value, Mapping):
                scalars.update({f"{name}/{part}": float(v) for part, v in value.items()})
            else:
                scalars[name] = float(value)
            if hasattr(metric, "curve"):
                curves[name] = {name: metric.curve().detach().cpu()}
            elif hasattr(metric, "curves"):
                curves[name] = {k: v.detach().cpu() for k, v in metric.curves().items()}
        return scalars, curves


class DriftTracker:
    """Attribution drift of each analyzer against the previous and/or the first epoch.

    State (maps of the reference epochs and the history of the values) is tensors and
    plain types, for the checkpoint.
    """

    def __init__(self, references: Sequence[str]) -> None:
        self.references = tuple(references)
        self.first: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}
        self.history: dict[str, dict[str, list[float]]] = {}
        self.epochs: dict[str, list[int]] = {}
        self._metric = create_metric("attribution_drift", keep_per_sample=False)

    def update(self, analyzer: str, maps: Tensor, epoch: int) -> dict[str, float]:
        """Drift of ``maps`` against the references; then ``maps`` become "previous"."""
        maps = maps.detach()
        values: dict[str, float] = {}
        for reference in self.references:
            stored = (self.first if reference == "first" else self.previous).get(analyzer)
            if stored is None or stored.shape != maps.shape:
                continue
            drift = self._metric.to(maps.device)
            drift.reset()
            drift.update(stored.to(maps.device), maps)
            for measure, value in drift.compute().items():
                values[f"drift_{reference}_{measure}"] = float(value)
        self.first.setdefault(analyzer, maps.cpu().clone())
        self.previous[analyzer] = maps.cpu().clone()
        if values:
            self.epochs.setdefault(analyzer, []).append(epoch)
            for key, value in values.items():
                self.history.setdefault(analyzer, {}).setdefault(key, []).append(value)
        return values

    def curves(self, analyzer: str) -> dict[str, Tensor]:
        """The drift values of ``analyzer`` so far, one curve per measure (for plotting)."""
        return {key: torch.tensor(values)
                for key, values in self.history.get(analyzer, {}).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "previous": self.previous, "history": self.history,
                "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first = dict(state.get("first", {}))
        self.previous = dict(state.get("previous", {}))
        self.history = {k: {m: list(v) for m, v in d.items()}
                        for k, d in state.get("history", {}).items()}
        self.epochs = {k: list(v) for k, v in state.get("epochs", {}).items()}
