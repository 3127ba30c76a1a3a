"""``ExplainCallback``: explain fixed validation samples every epoch and log what it finds."""

from __future__ import annotations

import numbers
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from .. import viz
from ..analyzers import Analyzer, NotAnalyzableModelError, analyzers, create_analyzer
from ..analyzers.forward import OutputSelector, select_output
from ..analyzers.registry import parameters_of
from ..analyzers.validation import check_bool, check_choice, check_positive_int
from ..compiled import eager
from ..logging.images import image_directory, log_images, log_scalars
from ..metrics import localization_metrics
from ..modes import explaining, training_untouched, unmaterialized
from ..patterns.statistics import PATTERN_TYPES
from .agreement import FailedElsewhere, agreed, distributed
from .evaluation import (
    DEFAULT_LOCALIZATION,
    DriftTracker,
    ProbeMetrics,
    normalize_drift,
    normalize_metrics,
)
from .patterns import SOURCES, PatternCollector
from .probe import SELECTIONS, ProbeCollector, check_batch, check_masks, class_ids, pick

ON_ERROR = ("warn", "raise")
NORMALIZATIONS = ("per_sample", "shared")
GRIDS = ("combined", "each", "both")
T = TypeVar("T")


def normalize_analyzers(spec: Sequence[str] | Mapping[str, Mapping[str, Any]]
                        ) -> dict[str, dict[str, Any]]:
    """Check analyzer names and keywords; return ``{name: kwargs}``.

    Raises ``KeyError`` for an unknown name and ``TypeError`` for an unknown keyword, listing
    the valid ones, so that a bad configuration fails before training starts.
    """
    if isinstance(spec, str):
        specs = {spec: {}}
    elif isinstance(spec, Mapping):
        specs = dict(spec)
    elif isinstance(spec, Iterable) and all(isinstance(name, str) for name in spec):
        repeated = sorted(name for name, count in Counter(spec).items() if count > 1)
        if repeated:
            raise ValueError(f"analyzers lists {repeated} more than once; give each name once "
                             f"(for two settings of one method, use two callbacks with "
                             f"different names)")
        specs = {name: {} for name in spec}
    else:
        raise TypeError(f"analyzers={spec!r} is not valid; give analyzer names (a list of str) "
                        f"or a mapping of names to their parameters; valid names: "
                        f"{sorted(analyzers)}")
    if not specs:
        raise ValueError("analyzers is empty; give at least one analyzer name")
    for name, kwargs in specs.items():
        if name not in analyzers:
            raise KeyError(f"unknown analyzer {name!r}; valid names: {sorted(analyzers)}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"analyzer {name!r}: parameters must be a mapping of parameter "
                            f"names to values, got {kwargs!r}")
        accepted = parameters_of(analyzers[name])
        unknown = sorted(set(kwargs or {}) - set(accepted))
        if unknown:
            raise TypeError(f"analyzer {name!r} got unknown parameter(s) {unknown}; "
                            f"it accepts {sorted(accepted)}")
        if (kwargs or {}).get("neuron_selection_mode") == "index":
            raise ValueError(f"analyzer {name!r}: neuron_selection_mode='index' needs the "
                             f"output to explain at each analysis, which the callback does not "
                             f"give: it explains each sample's predicted class "
                             f"('max_activation', the default), or with 'all' all outputs")
    return {name: dict(kwargs or {}) for name, kwargs in specs.items()}


class ExplainCallback(Callback):
    """Explain fixed validation samples every epoch; log pictures, metrics and drift.

    The probe set (``num_samples`` validation samples, kept in the checkpoint) is taken from
    the first validation epoch's batches, of the first validation dataloader only where there
    are several (``pattern_source="val"`` collects from all of them). Every ``every_n_epochs``
    epochs each analyzer explains it on the model's device, and every logger of the Trainer
    gets:

    - ``explain/all``: one row per sample — the input, then one heatmap column per analyzer —
      with true and predicted labels (with one analyzer: ``explain/<analyzer>``;
      ``grids="each"`` or ``"both"``: a picture per analyzer too);
    - ``explain/<analyzer>/<metric>``: each metric, and ``explain/<analyzer>/<metric>_curve``,
      a plot of the mean perturbation curve, at the end of training (of the last explained
      epoch; ``curves_every_n_epochs``: also during training);
    - ``explain/<analyzer>/drift_<previous|first>_<measure>``: how much the maps changed
      (the dashboards plot these over the epochs), and at the end of training
      ``explain/<analyzer>/drift``, one plot of all of them;
    - ``explain/time_s`` and ``explain/metrics_time_s``: the callback's seconds that epoch
      (all of it, and the metrics' share), also written as one log line.

    ``explain`` is the callback's ``name``. Under ``trainer.validate()`` the same pictures and
    metrics go under ``<name>_validate/...`` and the drift series is left alone. Each
    validation's are logged at the step Lightning logs that validation's own metrics at
    (``val_loss``); the plots made at the end of training at the last explained one's.

    Each ``fit`` is a run of its own: it starts afresh (new probe samples, preflight, drift and
    patterns), unless a checkpoint resumes it. So does a ``validate()`` of another module than
    the one of the callback's last run (another fold, or a model loaded from a checkpoint
    into a new object); a ``validate()`` of the same module explains that run's probe samples,
    whatever validation data it is given.

    TensorBoard, W&B and MLflow (``pip install lit-explain[mlflow]``) get images; other
    loggers (or none) get PNG files under their log directory. Pattern analyzers
    (``pattern.net``, ``pattern.attribution``) get patterns
    fit from the batches the Trainer runs anyway (``pattern_source``), refreshed each epoch.

    Parameters
    ----------
    analyzers:
        Analyzer names (``lit_explain.analyzers``), or ``{name: {parameter: value}}``.
    num_samples:
        Number of probe samples.
    sample_selection:
        ``"first"`` (the first validation samples) or ``"stratified"`` (round-robin over
        the classes, drawn with ``seed``).
    seed:
        Seed of the probe selection.
    every_n_epochs:
        Explain at the first validation, then at the first validation at least this many
        epochs after the last explained one: at most once per epoch (``val_check_interval``
        below 1 validates more often), and at every validation of a Trainer that validates
        every ``check_val_every_n_epoch`` epochs, when they are equal.
    metrics:
        Metric names (``lit_explain.metrics.metrics``, e.g. ``"pixel_flipping"``,
        ``"sparseness"``), or ``{name: {parameter: value}}``.
    drift:
        Compare each epoch's maps with the ``"previous"`` and/or ``"first"`` explained epoch
        (``[]``: no drift).
    input_key:
        Where the input sits in a batch: a tuple index or a dict key.
    target_key:
        Where the label sits in a batch: a tuple index or a dict key (``None``: no labels).
    mask_key:
        Where ground-truth masks sit in a batch (tuple index or dict key; ``None``: no
        masks): boolean or {0, 1}, the input's shape or its spatial shape. They are kept with
        the probe samples (and in the checkpoint), outlined on the input column of the
        pictures, and scored by the localization metrics
        (``lit_explain.metrics.localization_metrics``) named in ``metrics``, or by default
        by relevance mass and rank accuracy, the pointing game and attribution
        localisation (``shortcut_score``, for object masks, where named), as
        ``explain/<analyzer>/<metric>``.
    output_key:
        For a model that returns a tuple (an index) or a mapping (a key): the output to
        explain, for the analyzers, the metrics and the predicted labels. ``None``: the first
        tensor of a tuple, ``"logits"`` of a mapping.
    analysis_batch_size:
        At most this many probe samples go through an analyzer at once.
    normalization:
        ``"per_sample"``: each heatmap uses its own range. ``"shared"``: one range per
        analyzer and epoch for all its samples (a robust maximum, see
        :func:`lit_explain.viz.robust_absmax`), written on the colour bar (in the column
        header where several analyzers share a picture), so that samples compare and the
        magnitude over the epochs can be read off the numbers.
    cmap:
        Colour map of the heatmaps (``lit_explain.viz.cmaps``). ``"auto"``: ``"seismic"``
        (red for, blue against, white 0) for signed maps, the one-sided ``"oranges"``
        (white 0) for maps without negative values (``|gradient|``, squared SmoothGrad).
    overlay:
        Draw each heatmap over the grey input image (where the map is 0 the input shows).
    pattern_type:
        For pattern analyzers: iNNvestigate's pattern type (see ``docs/patterns.md``).
    pattern_source:
        For pattern analyzers: where the statistics come from, ``"train"`` (training
        forward passes) or ``"val"`` (validation forward passes, exact for the weights
        explained).
    pattern_every_n_batches:
        For pattern analyzers: collect from every n-th batch only (default: 10 for
        ``"train"``, 1 for ``"val"``).
    grids:
        Which heatmap pictures to draw each explained epoch: ``"combined"`` (one picture,
        a column per analyzer; the cheap default), ``"each"`` (one picture per analyzer),
        or ``"both"``.
    curves_every_n_epochs:
        Also plot the perturbation curves while training: at the first explained epoch, then
        at the first explained epoch at least this many epochs after the last plotted one
        (counted as ``every_n_epochs`` counts; ``None``: only at the end of training, the last
        explained epoch's; under ``validate()`` they are always plotted). The metric values
        themselves are logged every explained epoch.
    class_names:
        Names of the classes, for the labels in the pictures.
    token_names:
        For token models (integer inputs): the word of each token id, written in the
        picture's input column.
    on_error:
        ``"warn"``: nothing the callback does stops ``fit``. An analyzer the model cannot
        support is dropped at the preflight; a failing analyzer, metric (each alone), logger
        or prediction, or a map with NaNs, warns once, naming the cause, and training goes
        on. ``"raise"``: it raises (at the preflight: before the first training step), the
        error naming what raised it: the analyzer (in the message where it refuses the model,
        in a note otherwise: Python 3.11+), the metric, the logger.
    name:
        Prefix of the logged tags and key of the checkpoint state: give two callbacks on one
        Trainer different names.

    Notes
    -----
    Training is unchanged: the callback's forward passes run in eval mode (BatchNorm
    statistics and dropout untouched) and put every module's flag back; analyses freeze the
    parameters and take gradients with ``torch.autograd.grad``; the random number generators
    (torch's of the CPU and of the model's GPU, numpy's and Python's) are forked around the
    callback's work, so that a model drawing random numbers in eval mode (MC dropout) draws
    in training what it would have drawn without the callback. The model's own forward hooks
    run on the callback's forward passes, as they run in the model (they may change its
    output): a hook with side effects (one that stores activations, or updates a buffer)
    sees those passes too. Analyzers that draw noise (SmoothGrad, random) draw the same
    every explained epoch (their own generator restarts from its seed), so that drift
    measures the model, not the noise. Before the first training step (on the first sanity-check
    batch, or the first training batch where there is no sanity check and it is shaped like
    a validation batch) the preflight checks ``input_key``, ``target_key`` and ``mask_key``
    against the batch, and ``output_key`` against the model's output for one sample (a bad
    key raises, naming the valid ones; a batch is read as a tuple or list, a mapping or a
    tensor, and one of another type, such as a dataclass, raises saying so) and tries every
    analyzer and metric on one sample: under ``on_error="warn"``
    one the model cannot support is dropped with one warning, under ``"raise"`` it stops
    there. Where it ran on a training batch, the keys are checked again on the first
    validation batch (a key that fits the training batches and not the validation ones
    raises there: at the first validation, after training steps, not before step 1). An
    analyzer that refuses the model later (a pattern analyzer, which the preflight cannot try
    without patterns) is dropped there alike (under ``"raise"``: raised there). Under DDP
    every rank explains its own probe samples, metrics and drift are reduced across ranks,
    and rank zero logs.

    Cost: one analysis per analyzer of the probe samples, one prediction forward, and for
    each perturbation metric ``num_samples x (steps + 1)`` forward passes per analyzer (the
    analyzers' curves batched together), plus the pictures: one grid per explained epoch by
    default (drawn and PNG-encoded in about 4 ms on a CPU for 8 samples and 6 analyzers), a
    curve plot per analyzer and metric and a drift plot per analyzer once at the end of
    training; the epoch's scalars go to TensorBoard as one event. ``explain/time_s`` says
    what each epoch took (``docs/examples.md``: the measured cost).
    """

    def __init__(self, analyzers: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradient",),
                 num_samples: int = 8, sample_selection: str = "first", seed: int = 0,
                 every_n_epochs: int = 1,
                 metrics: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
                 drift: Sequence[str] = ("previous", "first"), input_key: int | str = 0,
                 target_key: int | str | None = 1, mask_key: int | str | None = None,
                 output_key: int | str | None = None, analysis_batch_size: int = 64,
                 normalization: str = "per_sample", cmap: str = "auto",
                 overlay: bool = False,
                 pattern_type: str = "relu", pattern_source: str = "train",
                 pattern_every_n_batches: int | None = None, grids: str = "combined",
                 curves_every_n_epochs: int | None = None,
                 class_names: Sequence[str] | None = None,
                 token_names: Sequence[str] | None = None, on_error: str = "warn",
                 name: str = "explain") -> None:
        super().__init__()
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"name={name!r} is not valid; use letters, digits, '_', '.', '-' "
                             f"(it prefixes the logged tags)")
        self.name = name
        self.analyzer_specs = normalize_analyzers(analyzers)
        self.metric_specs = normalize_metrics(metrics)
        localizing = [name for name in self.metric_specs if name in localization_metrics]
        if localizing and mask_key is None:
            raise ValueError(f"metrics {localizing} score maps against masks; set mask_key "
                             f"to where the masks sit in a validation batch")
        if mask_key is not None and not localizing:
            self.metric_specs.update({name: {} for name in DEFAULT_LOCALIZATION})
        self._drift_references = normalize_drift(drift)
        # (numpy integers, as a config or sweep may give them, become ints: the checkpoint
        # holds plain types)
        num_samples, every_n_epochs, analysis_batch_size, pattern_every_n_batches, \
            curves_every_n_epochs = (_plain_int(v) for v in (
                num_samples, every_n_epochs, analysis_batch_size, pattern_every_n_batches,
                curves_every_n_epochs))
        for name, value in (("num_samples", num_samples), ("every_n_epochs", every_n_epochs),
                            ("analysis_batch_size", analysis_batch_size)):
            check_positive_int(name, value)
        check_choice("sample_selection", sample_selection, SELECTIONS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_choice("cmap", cmap, ["auto", *sorted(viz.cmaps)])
        check_choice("pattern_source", pattern_source, SOURCES)
        check_choice("pattern_type", pattern_type, PATTERN_TYPES)  # (also where unused: a
        if pattern_every_n_batches is not None:  # typo is caught before a long run)
            check_positive_int("pattern_every_n_batches", pattern_every_n_batches)
        check_choice("grids", grids, GRIDS)
        if curves_every_n_epochs is not None:
            check_positive_int("curves_every_n_epochs", curves_every_n_epochs)
        self.grids = grids
        self.curves_every_n_epochs = curves_every_n_epochs
        check_choice("on_error", on_error, ON_ERROR)
        ProbeCollector(num_samples, sample_selection, seed)  # (its checks, at construction)
        self._probe_options = (num_samples, sample_selection, seed)
        self.every_n_epochs = every_n_epochs
        for option, key in (("input_key", input_key), ("target_key", target_key),
                            ("mask_key", mask_key)):
            if isinstance(key, (bool, float)) or not isinstance(key, Hashable) or (
                    key is None and option == "input_key"):
                raise TypeError(f"{option}={key!r} is not valid; give a tuple index (int) or "
                                f"a mapping key (such as a str) of the batch"
                                + ("" if option == "input_key" else ", or None"))
        self.input_key = input_key
        self.target_key = target_key
        self.mask_key = mask_key
        if output_key is not None and (not isinstance(output_key, (int, str))
                                       or isinstance(output_key, bool)):
            raise TypeError(f"output_key={output_key!r} is not valid; expected a tuple index "
                            f"(int), a mapping key (str) or None")
        self.output_key = output_key
        self.analysis_batch_size = analysis_batch_size
        self.normalization = normalization
        self.cmap = cmap
        check_bool("overlay", overlay)
        self.overlay = overlay
        self.class_names = _names("class_names", class_names)
        self.token_names = _names("token_names", token_names)
        self.on_error = on_error
        self._pattern_options = (pattern_type, pattern_source, pattern_every_n_batches)
        PatternCollector(*self._pattern_options)  # (its checks, at construction)
        self._configured_metrics = {name: dict(kwargs)
                                    for name, kwargs in self.metric_specs.items()}
        self._analyzers: dict[str, Analyzer] = {}
        self._metrics: ProbeMetrics | None = None
        self._rank = 0  # (this process's, for its own warnings under DDP)
        self._module: nn.Module | None = None  # the module the run's state belongs to
        self._start_afresh()

    def _start_afresh(self) -> None:
        """The state of one run: probe samples, drift references, pattern statistics, what
        the preflight dropped and what was warned. Made anew at every ``fit``, and at a
        ``validate()`` of another module than the last run's (a callback reused for another
        run, a fold of a cross-validation, explains that run; before, its stale state
        explained nothing there, or the other run's samples), not at a ``test()`` or
        ``predict()``, which explain nothing; a checkpoint restores it after this."""
        self.probe = ProbeCollector(*self._probe_options)
        self.drift = DriftTracker(self._drift_references)
        uses_patterns = any(name.startswith("pattern.") for name in self.analyzer_specs)
        self.patterns = PatternCollector(*self._pattern_options) if uses_patterns else None
        self.metric_specs = {name: dict(kwargs)
                             for name, kwargs in self._configured_metrics.items()}
        self._dropped: set[str] = set()
        self._checked = False  # whether the preflight ran
        self._lazy_validation_waits = 0  # validation batches the preflight waited at (lazy)
        self._validation_keys_checked = False  # whether the keys fit a validation batch
        self._warned: set[str] = set()
        self._last_epoch: int | None = None  # the last epoch explained in fit
        self._last_curves: dict[str, Any] = {}  # the last explained epoch's curves, unplotted
        self._last_curves_epoch: int | None = None  # the last epoch whose curves were plotted
        #: The step the last epoch explained in this fit was logged at (the end-of-training
        #: plots go there: its curves, the drift up to it).
        self._last_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        # The name only: a resume with other analyzers or metrics finds its state (and
        # keeps what still applies, see load_state_dict).
        return self._generate_state_key(name=self.name)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):  # (test and predict: nothing explained)
            return
        if stage == "fit" or (self._module is not None and self._module is not pl_module):
            self._start_afresh()
        self._module = pl_module
        self._analyzers = {name: self._create(name, kwargs, pl_module)
                           for name, kwargs in self.analyzer_specs.items()
                           if name not in self._dropped}
        self._selector = OutputSelector(pl_module, self.output_key)
        self._metrics = ProbeMetrics(self.metric_specs, self._selector, list(self._analyzers))
        self._metric_names = tuple(self.metric_specs)  # (as configured: the same on every rank)
        self._rank = trainer.global_rank
        if stage == "validate" and getattr(getattr(trainer.strategy, "launcher", None),
                                           "_start_method", None) is not None:
            self._warn_once("spawned", (
                "strategy='ddp_spawn' (or 'ddp_fork', 'ddp_notebook') runs each stage in new "
                "processes: what a fit() before this validation left in the callback there "
                "(probe samples, patterns, drift) does not come back, so this validation starts "
                "afresh. Use strategy='ddp' (or one device) to explain fit's probe samples "
                "again."))
        if not trainer.loggers:
            self._warn_once("no logger", "the Trainer has no logger: pictures go to PNG files "
                            f"under {image_directory(None, trainer.default_root_dir)} and the "
                            "metrics are not recorded. Give the Trainer a logger to keep them.")

    def _create(self, name: str, kwargs: Mapping[str, Any], model: nn.Module) -> Analyzer:
        """Analyzer ``name`` of ``model``; a bad parameter value names the analyzer."""
        try:
            return create_analyzer(name, model, **{"output_key": self.output_key, **kwargs})
        except (TypeError, ValueError) as error:
            raise type(error)(f"analyzer {name!r}: {error}") from error

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.enable_validation:
            self._warn_once("no validation", (
                "the Trainer runs no validation (no val_dataloader or validation_step, or "
                "limit_val_batches=0), so nothing is explained: the callback takes its probe "
                "samples from the validation batches. Give the Trainer validation data."))

    # Before the first training step: the keys, every analyzer and every metric.

    def _check_analyzers(self, batch: Any, pl_module: L.LightningModule,
                         training_batch: bool) -> None:
        """The preflight, on the first batch the keys fit; and the keys on the first
        validation batch, also where the preflight ran on a training batch (no sanity check):
        the keys may fit the training batches and not the validation ones."""
        if self._checked and (training_batch or self._validation_keys_checked):
            return
        try:
            inputs, _ = check_batch(batch, self.input_key, self.target_key)
            if self.mask_key is not None:  # a configuration error: raised whatever on_error
                check_masks(self._masks_in(batch), inputs, self.mask_key)  # says
            fits = True
        except (ValueError, TypeError, KeyError):
            if not training_batch:
                raise
            fits = False  # training batches may be shaped otherwise: the first validation
        # batch is checked instead (under DDP where one rank's does not fit: every rank's,
        # so that all of them run the preflight's reductions together)
        if not training_batch:
            self._validation_keys_checked = True
        if training_batch and distributed():
            fits = self._agree({("batch fits", ""): fits})["batch fits", ""]
        if not fits or self._checked:
            return
        lazy = unmaterialized(pl_module)
        if lazy is not None:  # (a lazy module: its first forward gives its shapes; a later
            # batch) ... one that neither training nor a validation batch ran
            self._lazy_validation_waits += not training_batch
            if pl_module.global_step and self._lazy_validation_waits > 1:
                self._warn_once("lazy", (
                    f"the model's lazy module '{lazy}' has not run in {pl_module.global_step} "
                    f"training steps nor in a validation batch, and nothing is explained "
                    f"before it has (its parameters are uninitialised): a lazy module the "
                    f"forward never runs (a head for another task) keeps the callback waiting. "
                    f"Run it once, or remove it"))
            return
        self._checked = True
        if self.patterns is not None:
            self._check_patterns(pl_module)
        # (compiled submodules: never compiled for the callback, see lit_explain.compiled)
        with eager("eager_on_recompile"), training_untouched(pl_module), explaining():
            self._try_on_one_sample(inputs[:1], batch)
        self._agree_on_the_preflight()

    def _agree_on_the_preflight(self) -> None:
        """Under DDP: drop on every rank an analyzer or metric the preflight dropped on any
        (each rank checks its own first sample), so that all of them reduce the same states."""
        if not distributed():
            return
        metrics = self._metrics.specs if self._metrics is not None else {}
        held = self._agree({**{(name, "analyzer"): name in self._analyzers
                               for name in self.analyzer_specs},
                            **{(name, "metric"): name in metrics for name in self._metric_names}})
        why = FailedElsewhere("it failed the preflight on another process")
        for name in self.analyzer_specs:
            if name in self._analyzers and not held[name, "analyzer"]:
                self._drop(name, why)
        for name in self._metric_names:
            if name in metrics and not held[name, "metric"]:
                self._drop_metric(name, why)

    def _check_patterns(self, pl_module: L.LightningModule) -> None:
        """The pattern analyzers' statistics need kernel layers: checked here, where the model
        is complete (``configure_model`` runs after ``setup``); a model without them drops
        those analyzers (or raises)."""
        try:
            self.patterns.setup(pl_module)
        except (ValueError, NotAnalyzableModelError) as error:
            if self.on_error == "raise":
                self._raise("the pattern analyzers", error)
            for name in [n for n in self._analyzers if n.startswith("pattern.")]:
                self._drop(name, error)

    def _try_on_one_sample(self, sample: Tensor, batch: Any) -> None:
        """The preflight proper: ``output_key`` (a configuration error, raised whatever
        ``on_error`` says: a key the output lacks made every analyzer fail, each dropped with
        advice to remove it), then every analyzer and metric on one sample."""
        try:
            with torch.inference_mode(False), torch.no_grad():
                output = self._selector.model(sample.clone())
        except Exception:  # (the model's own failure: each analyzer meets it and says so)
            output = None
        if output is not None:
            select_output(output, self.output_key)
        first_map = None
        for name, analyzer in list(self._analyzers.items()):
            if name.startswith("pattern."):
                continue
            try:
                result = analyzer.analyze(sample)
            except Exception as error:
                self._drop_or_raise(name, error)
            else:  # (the metrics are checked on a finite map: a map of NaN, which an epoch
                # skips with a warning, would fail them)
                if first_map is None and bool(torch.isfinite(result).all()):
                    first_map = result
        if first_map is not None and self._metrics is not None:
            self._check_metrics(sample, first_map, batch)

    def _drop_or_raise(self, name: str, error: Exception) -> None:
        """Drop analyzer ``name``, which cannot explain this model, with one warning; under
        ``on_error="raise"`` raise ``error`` instead, naming the analyzer (a refusal of the
        model in its message, any other error in a note)."""
        if self.on_error == "warn":
            self._drop(name, error)
        elif isinstance(error, NotAnalyzableModelError):
            raise NotAnalyzableModelError(f"analyzer {name!r}: {error}") from error
        else:
            self._raise(f"analyzer {name!r}", error)

    def _drop(self, name: str, error: Exception) -> None:
        """Drop an analyzer that cannot explain this model, with one warning."""
        del self._analyzers[name]
        self._dropped.add(name)
        if self._metrics is not None:
            self._metrics.drop_analyzer(name)
        if self.patterns is not None and not any(
                n.startswith("pattern.") for n in self._analyzers):
            self.patterns.batch_end()  # no pattern analyzer left: no statistics to collect
            self.patterns = None
        remaining = sorted(self._analyzers)
        self._warn(
            f"analyzer {name!r} cannot explain this model and is dropped "
            f"({type(error).__name__}: {error}). "
            + (f"Training goes on with {remaining}. " if remaining else
               "No analyzer is left; training goes on without explanations. ")
            + f"Remove {name!r} from analyzers"
            + (" (or pick one with a rule for that operation)" if isinstance(
                error, NotAnalyzableModelError) else "")
            + " to silence this, or set on_error='raise' to stop instead.", every_rank=True)

    def _check_metrics(self, sample: Tensor, maps: Tensor, batch: Any) -> None:
        """Try every metric on one sample's map; drop (or raise on) one that fails."""
        masks = None if self.mask_key is None else self._masks_in(batch)
        specs = self._metrics.specs
        if masks is None:  # (a batch without masks: the localization metrics wait for some)
            specs = {name: kwargs for name, kwargs in specs.items()
                     if name not in localization_metrics}
        with torch.inference_mode(False):
            sample, maps = sample.clone(), maps.detach().clone()
            masks = None if masks is None else masks[:1].clone()
            target = self._predict(sample).argmax(1)
            # (this rank's sample alone: no reduction across processes)
            probe = ProbeMetrics(specs, self._selector, ["preflight"], sync=False)
            failures: list[tuple[str, Exception]] = []
            probe.evaluate(sample, {"preflight": maps}, target, masks,
                           lambda metric, _, error: failures.append((metric, error)))
        for metric, error in failures:
            if self.on_error == "raise":
                raise type(error)(f"metric {metric!r}: {error}") from error
            self._drop_metric(metric, error)

    def _drop_metric(self, metric: str, error: Exception) -> None:
        """Drop a metric that failed at the preflight, with one warning."""
        self._metrics.drop_metric(metric)
        self.metric_specs.pop(metric, None)  # not rebuilt for validate() after fit
        self._warn(f"metric {metric!r} cannot score this model's maps and is dropped "
                   f"({type(error).__name__}: {error}); the other metrics go on. Change its "
                   f"parameters or remove it from metrics, or set on_error='raise' to stop "
                   f"instead.", every_rank=True)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._check_analyzers(batch, pl_module, training_batch=True)
        if self.patterns is not None:
            self.patterns.batch_start(trainer, pl_module, "train", batch_idx)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.patterns is not None:
            self.patterns.batch_end()

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.patterns is not None:
            self.patterns.epoch_start(trainer, "train")

    # Validation: probe samples, pattern statistics, then the analysis.

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer,
                                  pl_module: L.LightningModule) -> None:
        if self.patterns is not None:
            self.patterns.epoch_start(trainer, "val")

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # the sanity check's first batch, or validate()'s
        self._check_analyzers(batch, pl_module, training_batch=False)
        if not trainer.sanity_checking and self.patterns is not None:
            self.patterns.batch_start(trainer, pl_module, "val", batch_idx)

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.patterns is not None:
            self.patterns.batch_end(finished=True)
        if trainer.sanity_checking or dataloader_idx != 0 or self.probe.ready:
            return
        self.probe.add(pick(batch, self.input_key), pick(batch, self.target_key),
                       self._masks_in(batch))

    def _masks_in(self, batch: Any) -> Tensor | None:
        """The batch's masks at ``mask_key`` (``None`` without one); a key the batch lacks
        raises a ``ValueError`` naming the option and the batch's keys."""
        try:
            return pick(batch, self.mask_key)
        except KeyError as error:
            raise ValueError(f"mask_key={self.mask_key!r} does not fit the validation batch: "
                             f"{error.args[0]}. Set mask_key= to where the masks sit") from None

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if not self.probe.ready:
            self.probe.finish()
            self._say_what_the_probe_is(len(trainer.num_val_batches))
        if self.patterns is not None:
            self._guarded("pattern refresh", lambda: self.patterns.refresh(trainer))
        ready = self.probe.ready and bool(self._analyzers)
        if distributed():  # (a rank with no validation sample has no probe: none explains)
            ready = self._agree({("probe ready", ""): ready})["probe ready", ""]
        if not ready:
            return
        if not self._due(trainer):
            if self._last_epoch == trainer.current_epoch:
                self._warn_once("once per epoch", (
                    "validation runs more than once per epoch (val_check_interval), and the "
                    "callback explains at the first validation of an epoch only "
                    "(every_n_epochs counts epochs): a run of one long epoch (an iterable "
                    "dataset with max_steps) is explained once."))
            return
        # (compiled submodules: never compiled for the callback, see lit_explain.compiled)
        with eager("eager_on_recompile"), training_untouched(pl_module), explaining():
            self._explain_and_log(trainer, pl_module)
        if trainer.state.fn != "validate":
            self._last_epoch, self._last_step = trainer.current_epoch, _logging_step(trainer)

    def _due(self, trainer: L.Trainer) -> bool:
        """Whether this validation is explained (see ``every_n_epochs``)."""
        return trainer.state.fn == "validate" or self._last_epoch is None or (
            trainer.current_epoch - self._last_epoch >= self.every_n_epochs)

    def _say_what_the_probe_is(self, dataloaders: int) -> None:
        """Warn once when the probe set is not what was asked for (``dataloaders``: how many
        validation dataloaders the Trainer runs)."""
        got = 0 if self.probe.inputs is None else len(self.probe.inputs)
        if 0 < got < self.probe.num_samples:
            source = (f"the first of the {dataloaders} validation dataloaders (the probe set "
                      f"is drawn from it only)" if dataloaders > 1 else "the validation set")
            self._warn_once("few samples", f"{source} gave {got} samples, fewer than "
                            f"num_samples={self.probe.num_samples}: {got} are explained.")
        if self.probe.selection == "stratified" and got and self.probe.targets is None:
            self._warn_once("no labels", "sample_selection='stratified' needs labels, but the "
                            "batches have none (target_key=None): the first samples are "
                            "explained instead.")
        if self.probe.unstratified:
            self._warn_once("no classes", "sample_selection='stratified' needs one class per "
                            "sample (class ids, or one-hot or probability rows), but the labels "
                            "name none (multi-hot labels, regression targets): the first "
                            "samples are explained instead.")
        if self.probe.left_out:
            self._warn_once("left out", f"{self.probe.left_out} validation samples come in "
                            f"batches shaped otherwise than the first (each padded to its own "
                            f"length?) and were left out of the probe set; pad the validation "
                            f"batches to one length to draw from all of them.")

    def _explain_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        started = time.perf_counter()
        validating = trainer.state.fn == "validate"
        prefix = f"{self.name}_validate" if validating else self.name
        inputs = self.probe.inputs.to(pl_module.device)
        masks = None if self.probe.masks is None else self.probe.masks.to(pl_module.device)
        outputs = self._guarded("prediction", lambda: self._predict(inputs))
        maps: dict[str, Tensor] = {}
        scalars: dict[str, float] = {}
        plots: dict[str, Tensor] = {}
        names = list(self._analyzers) if outputs is not None else []
        progress = _progress(trainer, len(names) + 2, f"{self.name}: explaining "
                             f"{len(inputs)} samples")
        for name in names:
            result = self._explained_by(name)
            progress(1)
            if result is not None:
                maps[name] = result
        if not self._agree_on_maps(outputs is not None, maps):
            progress(0, close=True)
            return
        predictions = outputs.argmax(1)  # the explained outputs (max_activation)
        # the predicted classes, as the pictures show them: a one-logit model's is logit > 0
        classes = (outputs[:, 0] > 0).long() if outputs.shape[1] == 1 else predictions
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The pictures are drawn and logged while the metrics run (the colour mapping and
            # PNG encoding release the GIL most of the time); joined before the hook returns.
            pictures = pool.submit(self._log_pictures, trainer, prefix, {
                k: v.cpu() for k, v in maps.items()}, classes.cpu()) if (
                trainer.is_global_zero and maps) else None
            metrics_seconds = self._score(trainer, prefix, inputs, maps, predictions, masks,
                                          validating, scalars, plots)
            progress(1)
            if not validating:
                self._drift(trainer.current_epoch, prefix, maps, scalars)
            if pictures is not None:
                pictures.result()
        if trainer.is_global_zero:
            self._log_images(trainer, {k: v for k, v in plots.items() if v is not None})
        progress(1, close=True)
        seconds = time.perf_counter() - started
        if trainer.is_global_zero:  # every scalar of the epoch in one write
            scalars.update({f"{prefix}/time_s": seconds,
                            f"{prefix}/metrics_time_s": metrics_seconds})
            self._to_each_logger(trainer, lambda loggers: log_scalars(loggers, scalars,
                                                                      _logging_step(trainer)))
        rank_zero_info(f"ExplainCallback {self.name!r}, epoch {trainer.current_epoch}: "
                       f"{_count(len(maps), 'analyzer')} ({', '.join(maps)}) x "
                       f"{_count(len(inputs), 'sample')} in {seconds:.2f} s, of which "
                       f"metrics {metrics_seconds:.2f} s")

    def _score(self, trainer: L.Trainer, prefix: str, inputs: Tensor, maps: dict[str, Tensor],
               predictions: Tensor, masks: Tensor | None, validating: bool,
               scalars: dict[str, float], plots: dict[str, Tensor | None]) -> float:
        """Score the maps with every metric into ``scalars`` (and the curve plots due this
        epoch into ``plots``); return the seconds it took."""
        metrics_started = time.perf_counter()
        if self._metrics is not None and self._metrics.specs and maps:
            # the maps explain each sample's predicted class (max_activation): score that
            # class, also where the prediction is wrong
            scores = self._metrics.evaluate(
                inputs, maps, predictions, masks,
                lambda metric, analyzer, error: self._warn_or_raise(
                    f"metric {metric!r}" + (f" of analyzer {analyzer!r}" if analyzer else ""),
                    error), self._agree)
            curves_now = validating or self._curves_due(trainer.current_epoch)
            if curves_now and not validating:
                self._last_curves_epoch = trainer.current_epoch
            self._last_curves = {}
            for name, (values, curves) in scores.items():
                scalars.update({f"{prefix}/{name}/{key}": v for key, v in values.items()})
                for metric, curve in curves.items():
                    tag = f"{prefix}/{name}/{metric}_curve"
                    if curves_now:
                        plots[tag] = self._guarded("plot", lambda n=name, m=metric, c=curve: (
                            _curve_plot(n, m, *c)))
                    else:  # plotted at the end of training
                        self._last_curves[tag] = (name, metric, curve)
        return time.perf_counter() - metrics_started

    def _curves_due(self, epoch: int) -> bool:
        """Whether ``epoch``'s curves are plotted while training (``curves_every_n_epochs``):
        at the first explained epoch, then at the first one at least that many epochs after
        the last plotted (counted as ``every_n_epochs`` counts, so that the epochs Lightning
        validates at, with ``check_val_every_n_epoch``, are the ones that count)."""
        return self.curves_every_n_epochs is not None and (
            self._last_curves_epoch is None
            or epoch - self._last_curves_epoch >= self.curves_every_n_epochs)

    def _drift(self, epoch: int, prefix: str, maps: dict[str, Tensor],
               scalars: dict[str, float]) -> None:
        """Update the drift of every map into ``scalars`` (all analyzers' measures and means
        at once; a map that cannot be measured costs only its own drift)."""
        drifts = self._guarded("drift", lambda: self.drift.update_all(
            maps, epoch, lambda name, error: self._warn_or_raise(f"drift of {name!r}", error),
            self._agree)) or {}
        for name, drift in drifts.items():
            if drift:
                scalars.update({f"{prefix}/{name}/{key}": v for key, v in drift.items()})

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Drift over the epochs, one plot per analyzer, once: while training runs, the
        # dashboards plot the drift scalars themselves. Rank zero draws; every rank then
        # waits for it, so that no process tears the process group down under another.
        if self._last_epoch is None and trainer.enable_validation and self._analyzers:
            self._warn_once("nothing explained", "training ended before a validation ran "
                            "(check_val_every_n_epoch above the epochs trained, max_steps, "
                            "max_time or an early stop before the first one): nothing was "
                            "explained.")
        if trainer.is_global_zero:
            self._plot_at_end(trainer)
        trainer.strategy.barrier("ExplainCallback.on_train_end")

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if self.patterns is not None:  # (a step that raised left its hooks on the model)
            self.patterns.batch_end()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.patterns is not None:
            self.patterns.batch_end()

    def _plot_at_end(self, trainer: L.Trainer) -> None:
        step = _logging_step(trainer) if self._last_step is None else self._last_step
        for tag, (name, metric, curve) in self._last_curves.items():
            plot = self._guarded("plot", lambda n=name, m=metric, c=curve: _curve_plot(n, m, *c))
            if plot is not None:
                self._to_each_logger(trainer, lambda loggers, t=tag, p=plot: log_images(
                    loggers, t, [viz.to_uint8_hwc(p)], step,
                    captions=[f"{t}, last explained epoch"],
                    default_root=trainer.default_root_dir))
        self._last_curves = {}
        for name in self.drift.history:
            if name not in self._analyzers:
                continue
            plot = self._guarded("drift plot", lambda n=name: viz.line_plot(
                **_drift_plot_args(n, self.drift.curves(n), self.drift.epochs[n])))
            if plot is not None:
                self._to_each_logger(trainer, lambda loggers, n=name, p=plot: log_images(
                    loggers, f"{self.name}/{n}/drift", [viz.to_uint8_hwc(p)],
                    step, captions=[f"{n}: drift over the epochs"],
                    default_root=trainer.default_root_dir))

    def _explained_by(self, name: str) -> Tensor | None:
        """The probe's maps by one analyzer; ``None`` where it fails (one that refuses the
        model is dropped, as at the preflight)."""
        try:
            return self._explain(self._analyzers[name])
        except NotAnalyzableModelError as error:
            self._drop_or_raise(name, error)
        except Exception as error:
            self._warn_or_raise(f"analyzer {name!r}", error)
        return None

    def _explain(self, analyzer: Analyzer) -> Tensor:
        if analyzer.name.startswith("pattern."):
            if not (self.patterns and self.patterns.patterns):
                hint = (f" (pattern_source='train' collects from the sampled training "
                        f"batches, pattern_every_n_batches={self.patterns.every_n_batches}, "
                        f"of which trainer.validate() runs none: there, use "
                        f"pattern_source='val')"
                        if self.patterns and self.patterns.source == "train" else "")
                raise RuntimeError(f"no patterns yet: no statistics were collected{hint}")
            analyzer.patterns = self.patterns.patterns
        device = self.probe.inputs.device
        for param in analyzer.model.parameters():
            device = param.device
            break
        generators = getattr(analyzer, "generators", None)
        if generators is not None:  # the same noise each epoch: drift is the model's
            generators.restart()
        chunks = [analyzer.analyze(chunk.to(device))
                  for chunk in self.probe.inputs.split(self.analysis_batch_size)]
        result = torch.cat(chunks)
        if not torch.isfinite(result).all():
            raise FloatingPointError("the attribution map contains NaN or infinite values")
        return result

    @torch.no_grad()
    def _log_pictures(self, trainer: L.Trainer, prefix: str, maps: dict[str, Tensor],
                      predictions: Tensor) -> None:
        """Draw the epoch's grids of the maps and log them."""
        # "shared": one robust range per analyzer and epoch, written on the picture. (A
        # range kept from the first epoch saturated every map: on the digits demo the maps
        # grow about tenfold over the first epochs as the logits grow.)
        absmax = "shared" if self.normalization == "shared" else None
        pictures = ({f"{prefix}/{name}": {name: m} for name, m in maps.items()}
                    if self.grids != "combined" or len(maps) == 1 else {})
        if len(maps) > 1 and self.grids != "each":
            pictures[f"{prefix}/all"] = maps
        images: dict[str, Tensor] = {}
        for tag, chosen in pictures.items():
            image = self._guarded("picture", lambda c=chosen: viz.explanation_grid(
                self.probe.inputs, c, labels=class_ids(self.probe.targets),
                predictions=predictions,
                class_names=self.class_names, cmap=self.cmap, absmax=absmax,
                token_names=self.token_names, masks=self.probe.masks,
                overlay=self.overlay and self.probe.inputs.dim() >= 4,
                as_uint8=True))  # converted in place on the canvas: no float copy
            if image is not None:
                images[tag] = image
        self._log_images(trainer, images)

    def _log_images(self, trainer: L.Trainer, images: dict[str, Tensor]) -> None:
        for tag, image in images.items():
            self._to_each_logger(trainer, lambda loggers, t=tag, i=image: log_images(
                loggers, t, [viz.to_uint8_hwc(i)], _logging_step(trainer),
                captions=[f"{t}, epoch {trainer.current_epoch}"],
                default_root=trainer.default_root_dir))

    def _to_each_logger(self, trainer: L.Trainer,
                        write: Callable[[list[Logger]], None]) -> None:
        """``write`` to each of the trainer's loggers on its own, so that one that fails is
        named and the others still get everything (with no logger, ``write([])``: pictures
        go to PNG files)."""
        for logger in trainer.loggers or [None]:
            where = "logging" if logger is None else f"logging to {type(logger).__name__}"
            self._guarded(where, lambda one=logger: write([] if one is None else [one]))

    # Errors: warn once per cause, or raise.

    def _predict(self, inputs: Tensor) -> Tensor:
        """The model's explained outputs for ``inputs``, flattened per sample (N, K)."""
        with torch.inference_mode(False), torch.no_grad():
            outputs = self._selector(inputs.clone())
        return outputs.reshape(len(inputs), -1)

    def _guarded(self, what: str, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except Exception as error:
            self._warn_or_raise(what, error)
            return None

    def _warn_or_raise(self, what: str, error: Exception) -> None:
        if self.on_error == "raise":
            self._raise(what, error)
        self._warn_once(f"{what}: {type(error).__name__}",
                        f"{what} failed and is skipped ({type(error).__name__}: {error}); "
                        f"training goes on. Set on_error='raise' to stop instead.",
                        every_rank=True)

    def _raise(self, what: str, error: Exception) -> NoReturn:
        """Raise ``error`` with a note that the callback's ``what`` raised it."""
        if hasattr(error, "add_note"):  # (Python 3.11+: the traceback says where)
            error.add_note(f"ExplainCallback {self.name!r}: raised by {what}")
        raise error

    def _warn_once(self, key: str, message: str, every_rank: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message, every_rank)

    def _warn(self, message: str, every_rank: bool = False) -> None:
        """Warn on rank zero, or (``every_rank``: a failure, which may happen on one rank's
        probe samples only) on the rank where it happens, which the message names."""
        # (its name where it is not the default: two callbacks on one Trainer say which)
        message = f"ExplainCallback{'' if self.name == 'explain' else f' {self.name!r}'}: " \
            f"{message}"
        if every_rank and distributed():
            warnings.warn(rank_prefixed_message(message, self._rank), UserWarning, stacklevel=3)
        else:
            rank_zero_warn(message)

    # Under DDP: what the ranks agree on before they reduce (see .agreement).

    def _agree(self, outcomes: Mapping[Hashable, bool]) -> dict[Hashable, bool]:
        return agreed(outcomes, self._selector.model.device)  # (the model's: NCCL's GPU)

    def _agree_on_maps(self, predicted: bool, maps: dict[str, Tensor]) -> bool:
        """Keep the maps of the analyzers that explained the probe on every rank (and drop
        one that another rank dropped); whether every rank predicted its probe samples."""
        if not distributed():
            return predicted
        held = self._agree({("prediction", ""): predicted,
                            **{(name, "active"): name in self._analyzers
                               for name in self.analyzer_specs},
                            **{(name, "explained"): name in maps for name in self.analyzer_specs}})
        if predicted and not held["prediction", ""]:
            self._warn_or_raise("prediction", FailedElsewhere(
                "it failed on another process's probe samples: nothing is explained this "
                "epoch"))
        for name in self.analyzer_specs:
            if name in self._analyzers and not held[name, "active"]:
                self._drop(name, FailedElsewhere("it was dropped on another process"))
            if name in maps and not held[name, "explained"] and held["prediction", ""]:
                del maps[name]
                self._warn_or_raise(f"analyzer {name!r}", FailedElsewhere(
                    "it failed on another process's probe samples, and is skipped on every "
                    "process this epoch"))
        return held["prediction", ""]

    # Checkpoint state: tensors and plain types only.

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"probe": self.probe.state_dict(), "drift": self.drift.state_dict(),
                 "analyzers": sorted(self.analyzer_specs), "last_epoch": self._last_epoch,
                 "last_curves_epoch": self._last_curves_epoch}
        if self.patterns is not None:
            state["patterns"] = self.patterns.state_dict()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what still applies: the probe set (when ``num_samples`` is unchanged and it
        has masks where ``mask_key`` asks for them; new samples start drift again) and the
        drift references of the analyzers that are still configured; warn about the rest."""
        configured = set(self.analyzer_specs)
        self._last_epoch = state_dict.get("last_epoch")
        self._last_curves_epoch = state_dict.get("last_curves_epoch")
        probe = state_dict.get("probe", {})
        saved_inputs = probe.get("inputs")
        drift = state_dict.get("drift", {})
        if saved_inputs is not None and distributed():
            # the checkpoint holds rank zero's probe set: every rank would explain it (and
            # measure drift against rank zero's maps) instead of its own samples
            self._warn_once("resume probe", (
                "under DDP the checkpoint holds rank zero's probe samples only: each rank "
                "takes its own again, and drift starts again from them"))
            drift = {}
        elif saved_inputs is not None and len(saved_inputs) != self.probe.num_samples:
            self._warn_once("resume probe", (
                f"the checkpoint's {len(saved_inputs)} probe samples do not match "
                f"num_samples={self.probe.num_samples}: new ones are taken, and drift starts "
                f"again from them (the saved references are maps of the old samples)"))
            drift = {}
        elif saved_inputs is not None and self.mask_key is not None and \
                probe.get("masks") is None:
            self._warn_once("resume probe", (
                f"the checkpoint's probe samples have no masks, and mask_key="
                f"{self.mask_key!r} is set now: new ones are taken with their masks, and "
                f"drift starts again from them"))
            drift = {}
        else:
            self.probe.load_state_dict(probe)
        saved = set(state_dict.get("analyzers", [])) | set(drift.get("first", {}))
        self.drift.load_state_dict({key: {a: v for a, v in value.items() if a in configured}
                                    for key, value in drift.items()})
        dropped = sorted(saved - configured)
        if dropped:
            self._warn_once("resume dropped", (
                f"the checkpoint holds state of analyzers {dropped}, which are no longer "
                f"configured: it is dropped. Kept: {sorted(saved & configured)}; new: "
                f"{sorted(configured - saved)}."))
        if self.patterns is not None and "patterns" in state_dict:
            self.patterns.load_state_dict(state_dict["patterns"])


def _plain_int(value: Any) -> Any:
    """A numpy integer as an int; anything else as it is (for the checks to judge)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(
        value, bool) else value


def _names(option: str, names: Any) -> list[str] | None:
    """``names`` (class or token names) as a list of strings, a mapping of ids to names as
    the list (an id it leaves out named by its number); a string or a non-iterable is
    refused naming the option."""
    if names is None:
        return None
    if isinstance(names, Mapping) and all(isinstance(k, int) and k >= 0 for k in names):
        return [str(names.get(i, i)) for i in range(max(names, default=-1) + 1)]
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{option}={names!r} is not valid; give a list of names (strings), "
                        f"one per class or token id, or None")
    return [str(name) for name in names]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs at now (its validation metrics, ``val_loss``, at this
    validation's): the batches that stepped the optimizers, as Lightning's own
    ``LearningRateMonitor`` logs. ``global_step`` counts optimizer steps, one more than that
    at an epoch's end validation (its explanation was drawn on the next epoch) and one per
    optimizer with several."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def _progress(trainer: L.Trainer, total: int, description: str) -> Callable[..., None]:
    """A small progress bar under Lightning's while the callback works (none without one)."""
    if trainer.progress_bar_callback is None or not trainer.is_global_zero:
        return lambda n=1, close=False: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def advance(n: int = 1, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return advance


def _curve_plot_args(analyzer: str, metric: str, series: dict[str, Tensor], x: Tensor | None,
                     score: str) -> dict[str, Any]:
    """What a metric's curve plot shows: its mean curve(s) (insertion/deletion: the two
    curves over the fraction of the input changed; never the fraction itself as a curve),
    axes named for what they hold (the model's ``score``, logit or probability, of the
    explained class)."""
    y_label = f"{score} of the explained class"
    if x is None:
        return dict(curves=series, title=f"{analyzer}: {metric}", x_label="perturbation step",
                    y_label=y_label)
    return dict(curves=series, title=f"{analyzer}: {metric}", x=x,
                x_label="fraction of regions changed", y_label=y_label)


def _curve_plot(analyzer: str, metric: str, series: dict[str, Tensor], x: Tensor | None,
                score: str) -> Tensor:
    """The plot of a metric's mean curve(s) (:func:`_curve_plot_args`)."""
    return viz.line_plot(**_curve_plot_args(analyzer, metric, series, x, score))


def _drift_plot_args(analyzer: str, curves: dict[str, Tensor], epochs: list[int]
                     ) -> dict[str, Any]:
    """The drift plot: each similarity measure (to the first and to the previous explained
    epoch's maps) over the explained epochs, ticked at those epochs."""
    return dict(curves=curves, title=f"{analyzer}: drift", x=epochs, x_label="epoch",
                y_label="similarity of the maps (1 = same)")
