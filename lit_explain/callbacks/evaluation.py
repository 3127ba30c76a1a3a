"""Metrics and drift of the probe maps, for ExplainCallback.

Both use :mod:`lit_explain.metrics` (torchmetrics), so under DDP every rank evaluates its own
probe samples and ``compute()`` reduces the states across ranks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..analyzers.validation import check_choice
from ..metrics import create_metric, localization_metrics, metrics
from ..metrics.drift import average_ranks, drift_measures
from .agreement import Agree, FailedElsewhere, local

DRIFT_REFERENCES = ("previous", "first")
#: Metrics that the ``metrics`` option takes (drift has its own option).
MAP_METRICS = tuple(sorted(name for name in metrics if name != "attribution_drift"))
#: Localization metrics logged by default when the callback has masks (``mask_key``) and
#: ``metrics`` names none (top-k intersection needs a ``k`` that fits the images: name it).
#: The localization metrics scored where masks are given and none is named: each reads
#: "higher = more relevance on the mask", for a mask of the object or of a shortcut alike
#: (``shortcut_score``, the share outside an object mask, reads the other way: ask for it).
DEFAULT_LOCALIZATION = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game",
                        "attribution_localisation")


@functools.cache
def _takes_model(name: str) -> bool:
    return "model" in inspect.signature(metrics[name].__init__).parameters


def build_metric(name: str, model: nn.Module, kwargs: Mapping[str, Any]) -> Metric:
    """Metric ``name`` for ``model`` with ``kwargs``; a bad keyword or value raises the
    metric's own error type with the metric's name and the parameters it accepts."""
    return (create_metric(name, model, **kwargs) if _takes_model(name)
            else create_metric(name, **kwargs))


def normalize_metrics(spec: Sequence[str] | Mapping[str, Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """Check metric names and keywords (by building each once); return ``{name: kwargs}``."""
    spec = spec if isinstance(spec, (str, Mapping)) else list(spec)
    if isinstance(spec, list) and not all(isinstance(name, str) for name in spec):
        raise TypeError(f"metrics={spec!r} is not valid; give metric names (a list of str) or "
                        f"a mapping of names to their parameters; valid names: "
                        f"{list(MAP_METRICS)}")
    specs = {spec: {}} if isinstance(spec, str) else (
        dict(spec) if isinstance(spec, Mapping) else {name: {} for name in spec})
    for name, kwargs in specs.items():
        if name not in MAP_METRICS:
            raise KeyError(f"unknown metric {name!r}; valid names: {list(MAP_METRICS)} "
                           f"(drift has its own option, drift=)")
        if not isinstance(kwargs or {}, Mapping):
            raise TypeError(f"metric {name!r}: parameters must be a mapping, got {kwargs!r}")
        build_metric(name, nn.Identity(), kwargs or {})
    return {name: dict(kwargs or {}) for name, kwargs in specs.items()}


def normalize_drift(spec: Sequence[str] | str | None) -> tuple[str, ...]:
    """Check the drift references; return them as a tuple."""
    references = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    for reference in references:
        check_choice("drift", reference, DRIFT_REFERENCES)
    return references


#: One metric's mean curve(s) ``{label: curve}``, their x values (``None``: the step) and
#: what the y axis holds (``"logit"`` or ``"probability"`` of the explained class).
Curves = tuple[dict[str, Tensor], Tensor | None, str]
#: What :meth:`ProbeMetrics.evaluate` gives per analyzer: scalars ``{metric[/part]: value}``
#: and curves ``{metric: Curves}``.
Scores = tuple[dict[str, float], dict[str, Curves]]
#: Called with (metric, analyzer or None for all of them, error) when a metric fails.
OnFailure = Callable[[str, str | None, Exception], None]


class ProbeMetrics:
    """The configured metrics of each analyzer's maps, built once for the model.

    Each metric of each analyzer is evaluated on its own: one that fails is reported through
    ``on_failure`` and the others go on. The perturbation curves of all analyzers are
    computed together (the maps concatenated), so that they share their model calls.
    """

    def __init__(self, specs: Mapping[str, Mapping[str, Any]], model: nn.Module,
                 analyzers: Sequence[str], sync: bool = True) -> None:
        self.specs = {name: dict(kwargs) for name, kwargs in specs.items()}
        # (sync=False: computed from this process's samples alone, as the preflight's one)
        options = {} if sync else {"sync_on_compute": False}
        self.metrics = {analyzer: {name: build_metric(name, model, {**kwargs, **options})
                                   for name, kwargs in self.specs.items()}
                        for analyzer in analyzers}

    def drop_metric(self, name: str) -> None:
        """Stop evaluating metric ``name`` (for every analyzer)."""
        self.specs.pop(name, None)
        for chosen in self.metrics.values():
            chosen.pop(name, None)

    def drop_analyzer(self, analyzer: str) -> None:
        self.metrics.pop(analyzer, None)

    def evaluate(self, inputs: Tensor, maps: Mapping[str, Tensor], targets: Tensor | None,
                 masks: Tensor | None, on_failure: OnFailure,
                 agree: Agree = local) -> dict[str, Scores]:
        """Scores of every analyzer in ``maps``; ``targets``: the class each map explains.
        Under DDP (``agree``, see :mod:`.agreement`) a metric is computed, which reduces its
        states across the processes, for the analyzers whose update succeeded on all of
        them."""
        results: dict[str, Scores] = {analyzer: ({}, {}) for analyzer in maps}
        for name in list(self.specs):
            chosen = {a: self.metrics[a][name] for a in maps if name in self.metrics.get(a, {})}
            for metric in chosen.values():
                metric.reset()
                if metric.device != inputs.device:
                    metric.to(inputs.device)
            failed = self._update(name, chosen, inputs, maps, targets, masks, on_failure)
            # what succeeded on every process, and (a localization metric) which have no
            # mask to score on any: a process without one reduces its states all the same
            outcomes = {(a, "succeeded"): a not in failed for a in chosen}
            if name in localization_metrics:
                outcomes.update({(a, "no masks"): int(m.count) == 0 for a, m in chosen.items()})
            held = agree(outcomes) if chosen else {}
            for analyzer, metric in chosen.items():
                if not held[analyzer, "succeeded"]:
                    if analyzer not in failed:
                        on_failure(name, analyzer, FailedElsewhere(
                            "it failed on another process's probe samples, and is skipped on "
                            "every process (whose states it reduces together)"))
                    continue
                if held.get((analyzer, "no masks")):
                    continue  # no probe sample has a mask to score: nothing to log
                try:
                    scalars, curves = _read(name, metric)
                except Exception as error:
                    on_failure(name, analyzer, error)
                    continue
                results[analyzer][0].update(scalars)
                results[analyzer][1].update(curves)
        return results

    def _update(self, name: str, chosen: Mapping[str, Metric], inputs: Tensor,
                maps: Mapping[str, Tensor], targets: Tensor | None, masks: Tensor | None,
                on_failure: OnFailure) -> set[str]:
        """Update every analyzer's metric ``name``; return the analyzers for which it failed."""
        # (not where the curves draw from the metric's generator: each map's own metric
        # draws as it would alone, not a share of one stream for the stacked maps)
        if len(chosen) > 1 and all(hasattr(m, "sample_curves") and not m.draws_at_random
                                   for m in chosen.values()):
            first = next(iter(chosen.values()))
            count = len(chosen)
            try:  # one set of model calls for the curves of all analyzers
                curves = first.sample_curves(
                    inputs.repeat(count, *[1] * (inputs.dim() - 1)),
                    torch.cat([maps[a].to(inputs.device) for a in chosen]),
                    None if targets is None else targets.repeat(count))
            except Exception:  # find out which analyzer's maps it fails on
                pass
            else:
                for index, metric in enumerate(chosen.values()):
                    metric.update(curves=_part(curves, index, len(inputs)))
                return set()
        failed: set[str] = set()
        for analyzer, metric in chosen.items():
            try:
                _update_one(name, metric, inputs, maps[analyzer], targets, masks)
            except Exception as error:
                failed.add(analyzer)
                on_failure(name, analyzer, error)
        return failed


def _part(curves: Tensor | Mapping[str, Tensor], index: int, n: int) -> Any:
    """The ``index``-th block of ``n`` samples of batched per-sample curves."""
    if isinstance(curves, Mapping):
        return {key: value if value.dim() == 1 else value[index * n:(index + 1) * n]
                for key, value in curves.items()}
    return curves[index * n:(index + 1) * n]


def _update_one(name: str, metric: Metric, inputs: Tensor, maps: Tensor,
                targets: Tensor | None, masks: Tensor | None) -> None:
    if name in localization_metrics:
        if masks is None:
            raise ValueError(f"metric {name!r} needs masks: set mask_key")
        metric.update(maps, masks.to(maps.device))
    elif _takes_model(name):
        metric.update(inputs, maps, targets)
    else:
        metric.update(maps)


def _read(name: str, metric: Metric) -> Scores:
    """A metric's scalars and curves, of the states of all processes (``compute`` reduces
    them and puts the local ones back, so the curves are read in a reduction of their own:
    a curve read after it was this process's alone)."""
    value = metric.compute()
    scalars = ({f"{name}/{part}": float(v) for part, v in value.items()}
               if isinstance(value, Mapping) else {name: float(value)})
    curves: dict[str, Curves] = {}
    score = "probability" if getattr(metric, "softmax", False) else "logit"
    if hasattr(metric, "curve") or hasattr(metric, "curves"):
        with metric.sync_context(should_sync=metric.sync_on_compute):
            if hasattr(metric, "curve"):
                curves[name] = ({name: metric.curve().detach().cpu()}, None, score)
            else:
                parts = {k: v.detach().cpu() for k, v in metric.curves().items()}
                curves[name] = (parts, parts.pop("fraction", None), score)
    return scalars, curves


class DriftTracker:
    """Attribution drift of each analyzer against the previous and/or the first epoch.

    State (maps of the reference epochs and the history of the values) is tensors and
    plain types, for the checkpoint. The Spearman ranks of the reference maps are kept
    beside them (not in the checkpoint: recomputed when missing), so that each epoch ranks
    only its own maps, once: ranking is most of the cost of the drift of large maps.
    """

    def __init__(self, references: Sequence[str]) -> None:
        self.references = tuple(references)
        self.first: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}
        self.history: dict[str, dict[str, list[float]]] = {}
        self.epochs: dict[str, list[int]] = {}
        self._metric = create_metric("attribution_drift", keep_per_sample=False)
        self._means = _Means()
        self._ranks: dict[tuple[str, str], Tensor] = {}  # (reference, analyzer) -> ranks

    def _stored(self, analyzer: str, reference: str, maps: Tensor) -> Tensor | None:
        stored = (self.first if reference == "first" else self.previous).get(analyzer)
        return None if stored is None or stored.shape != maps.shape else stored.to(maps.device)

    def _reference_ranks(self, analyzer: str, reference: str, stored: Tensor) -> Tensor:
        ranks = self._ranks.get((reference, analyzer))
        if ranks is None or ranks.shape != (len(stored), stored[0].numel()):
            ranks = self._ranks[reference, analyzer] = average_ranks(stored.flatten(1).double())
        return ranks.to(stored.device)

    def _measure(self, maps: Mapping[str, Tensor]
                 ) -> tuple[dict[tuple[str, str], dict[str, Tensor]], dict[str, Tensor]]:
        """The per-sample drift measures of every analyzer against every reference, computed
        in one call per map shape (the pairs concatenated): ``{(analyzer, reference):
        measures}``, and the ranks of the maps that were measured."""
        groups: dict[tuple, list[tuple[str, str, Tensor, Tensor]]] = {}
        for analyzer, current in maps.items():
            current = current.detach()
            for reference in self.references:
                stored = self._stored(analyzer, reference, current)
                if stored is not None:
                    key = (tuple(current.shape), current.dtype, current.device)
                    groups.setdefault(key, []).append((analyzer, reference, stored, current))
        measured: dict[tuple[str, str], dict[str, Tensor]] = {}
        ranks: dict[str, Tensor] = {}
        for pairs in groups.values():
            n = len(pairs[0][3])
            analyzers = list(dict.fromkeys(p[0] for p in pairs))  # each map ranked once
            current = torch.cat([maps[a].detach() for a in analyzers]).flatten(1).double()
            ranks.update(zip(analyzers, average_ranks(current).split(n), strict=True))
            values = drift_measures(
                torch.cat([p[2] for p in pairs]), torch.cat([p[3] for p in pairs]),
                self._metric.top_k,
                reference_ranks=torch.cat([self._reference_ranks(a, r, s)
                                           for a, r, s, _ in pairs]),
                current_ranks=torch.cat([ranks[p[0]] for p in pairs]))
            for index, (analyzer, reference, _, _) in enumerate(pairs):
                measured[analyzer, reference] = {
                    k: v[index * n:(index + 1) * n] for k, v in values.items()}
        return measured, ranks

    def update_all(self, maps: Mapping[str, Tensor], epoch: int,
                   on_failure: Callable[[str, Exception], None],
                   agree: Agree = local) -> dict[str, dict[str, float]]:
        """Drift of each analyzer's ``maps`` against the references (``{analyzer: {key:
        value}}``, analyzers without a reference yet left out); then the maps become the
        references. The measures of all analyzers and references are computed in one call
        and their means reduced at once, one metric and one reduction across processes for
        all of them. An analyzer whose measures fail is reported to ``on_failure`` and
        skipped (its maps not kept); under DDP (``agree``, see :mod:`.agreement`) one that
        failed on any process is skipped on all of them."""
        current = {analyzer: m.detach() for analyzer, m in maps.items()}
        failed: set[str] = set()
        try:
            measured, ranks = self._measure(current)
        except Exception:  # find out which analyzer's maps fail: the others go on
            measured, ranks = {}, {}
            for analyzer, m in current.items():
                try:
                    one, one_ranks = self._measure({analyzer: m})
                except Exception as error:
                    failed.add(analyzer)
                    on_failure(analyzer, error)
                else:
                    measured.update(one)
                    ranks.update(one_ranks)
        succeeded = agree({a: a not in failed for a in current}) if current else {}
        for analyzer in current:
            if not succeeded[analyzer] and analyzer not in failed:
                on_failure(analyzer, FailedElsewhere(
                    "it failed on another process's probe samples, and is skipped on every "
                    "process (whose means it reduces together)"))
        keys = [(analyzer, reference, measure)
                for (analyzer, reference), values in measured.items() if succeeded[analyzer]
                for measure in values]
        means: list[float] = []
        if keys:
            values = torch.stack([measured[a, r][m] for a, r, m in keys])  # (K, samples)
            self._means.reset()
            if self._means.device != values.device:
                self._means.to(values.device)
            self._means.update(values.sum(1), torch.full((len(keys),), values.shape[1],
                                                         device=values.device))
            means = self._means.compute().tolist()
        drift: dict[str, dict[str, float]] = {}
        for (analyzer, reference, measure), value in zip(keys, means, strict=True):
            drift.setdefault(analyzer, {})[f"drift_{reference}_{measure}"] = value
        for analyzer, m in current.items():
            if succeeded[analyzer]:
                self._record(analyzer, m, epoch, drift.get(analyzer, {}), ranks.get(analyzer))
        return drift

    def _record(self, analyzer: str, maps: Tensor, epoch: int, values: dict[str, float],
                ranks: Tensor | None = None) -> None:
        """Keep ``maps`` (and their ``ranks``, when known) as the references and ``values``
        in the history."""
        if analyzer not in self.first:
            self.first[analyzer] = maps.cpu().clone()
            self._ranks.pop(("first", analyzer), None)
            if ranks is not None:
                self._ranks["first", analyzer] = ranks
        self.previous[analyzer] = maps.cpu().clone()
        self._ranks.pop(("previous", analyzer), None)
        if ranks is not None:
            self._ranks["previous", analyzer] = ranks
        if values:
            self.epochs.setdefault(analyzer, []).append(epoch)
            for key, value in values.items():
                self.history.setdefault(analyzer, {}).setdefault(key, []).append(value)

    def curves(self, analyzer: str) -> dict[str, Tensor]:
        """The drift values of ``analyzer`` so far, one curve per measure (for plotting)."""
        return {key: torch.tensor(values)
                for key, values in self.history.get(analyzer, {}).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "previous": self.previous, "history": self.history,
                "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._ranks = {}
        self.first = dict(state.get("first", {}))
        self.previous = dict(state.get("previous", {}))
        self.history = {k: {m: list(v) for m, v in d.items()}
                        for k, d in state.get("history", {}).items()}
        self.epochs = {k: list(v) for k, v in state.get("epochs", {}).items()}


class _Means(Metric):
    """Means of several series at once from their sums and counts (one update per reset),
    summed across processes before the division: one reduction for all of an epoch's drift
    values, equal to what :class:`~lit_explain.metrics.AttributionDrift` computes for each."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, sums: Tensor, counts: Tensor) -> None:
        if self.sums.numel():
            raise RuntimeError("_Means takes one update per reset")
        self.sums, self.counts = sums.double(), counts.long()

    def compute(self) -> Tensor:
        return self.sums / self.counts.clamp_min(1)
