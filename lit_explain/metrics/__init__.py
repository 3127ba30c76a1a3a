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


def create_metric(name: str, *args: object, **kwargs: object) -> Metric:
    """Instantiate the metric registered as ``name`` with the given arguments.

    Raises
    ------
    KeyError
        If ``name`` is unknown; the message lists the valid names.
    """
    try:
        cls = metrics[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; valid names: {sorted(metrics)}") from None
    return cls(*args, **kwargs)
