"""Metrics for explanations, as ``torchmetrics.Metric`` classes.

Faithfulness (does the map point at what the model uses?): :class:`RegionPerturbation`,
:class:`PixelFlipping`, :class:`InsertionDeletion`, :class:`FaithfulnessCorrelation`.
Complexity (is the map easy to read?): :class:`Sparseness`, :class:`Complexity`.
Stability over training: :class:`AttributionDrift`. iNNvestigate's perturbation tools:
:class:`Perturbation`, :class:`PerturbationAnalysis`. Localization against ground-truth
masks (``update(attributions, masks)``; names in :data:`localization_metrics`):
:class:`RelevanceMassAccuracy`, :class:`RelevanceRankAccuracy`, :class:`PointingGame`,
:class:`AttributionLocalisation`, :class:`TopKIntersection`, :class:`ShortcutScore`.

Every metric keeps sums and counts (``dist_reduce_fx="sum"``) so states merge across
batches and DDP processes by addition, draws randomness from its own seeded generator,
and calls the model under ``torch.no_grad()`` ``batch_size`` inputs at a time.

>>> m = create_metric("pixel_flipping", model, steps=50)  # doctest: +SKIP
>>> m.update(x, attributions)                             # doctest: +SKIP
>>> m.compute()                                           # doctest: +SKIP
"""

from __future__ import annotations

import inspect

from torchmetrics import Metric

from .complexity import Complexity, Sparseness
from .drift import AttributionDrift
from .faithfulness import FaithfulnessCorrelation
from .localization import (
    AttributionLocalisation,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    ShortcutScore,
    TopKIntersection,
)
from .perturbation import InsertionDeletion, PixelFlipping, RegionPerturbation
from .perturbation_analysis import Perturbation, PerturbationAnalysis

__all__ = [
    "AttributionDrift",
    "AttributionLocalisation",
    "Complexity",
    "FaithfulnessCorrelation",
    "InsertionDeletion",
    "Perturbation",
    "PerturbationAnalysis",
    "PixelFlipping",
    "PointingGame",
    "RegionPerturbation",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "ShortcutScore",
    "Sparseness",
    "TopKIntersection",
    "create_metric",
    "metric_parameters",
    "localization_metrics",
    "metrics",
]

#: Metric classes by the snake_case names the callback and configs use.
metrics: dict[str, type[Metric]] = {
    "pixel_flipping": PixelFlipping,
    "region_perturbation": RegionPerturbation,
    "insertion_deletion": InsertionDeletion,
    "faithfulness_correlation": FaithfulnessCorrelation,
    "sparseness": Sparseness,
    "complexity": Complexity,
    "attribution_drift": AttributionDrift,
    "relevance_mass_accuracy": RelevanceMassAccuracy,
    "relevance_rank_accuracy": RelevanceRankAccuracy,
    "pointing_game": PointingGame,
    "attribution_localisation": AttributionLocalisation,
    "top_k_intersection": TopKIntersection,
    "shortcut_score": ShortcutScore,
}

#: The metrics that score maps against ground-truth masks: ``update(attributions, masks)``.
localization_metrics: tuple[str, ...] = (
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "shortcut_score",
)


def metric_parameters(name: str) -> list[str]:
    """The keyword parameters of the metric registered as ``name`` (through ``**kwargs`` to
    its bases, up to torchmetrics' ``Metric``)."""
    accepted: set[str] = set()
    for klass in metrics[name].__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is Metric:
            continue
        parameters = inspect.signature(init).parameters
        accepted |= {p for p, v in parameters.items() if p not in ("self", "model")
                     and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)}
        if not any(v.kind is v.VAR_KEYWORD for v in parameters.values()):
            break
    return sorted(accepted)


def create_metric(name: str, *args: object, **kwargs: object) -> Metric:
    """Instantiate the metric registered as ``name`` with the given arguments.

    Raises
    ------
    KeyError
        If ``name`` is unknown; the message lists the valid names.
    TypeError, ValueError
        For a bad keyword or value, naming the metric and the parameters it accepts
        (torchmetrics' own message named neither: ``Unexpected keyword arguments: `foo```).
    """
    try:
        cls = metrics[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; valid names: {sorted(metrics)}") from None
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as error:
        accepted = metric_parameters(name)
        raise type(error)(f"metric {name!r}: {error} (it accepts "
                          f"{accepted or 'no parameters'})") from error
