"""``ExplainCallback``: explain fixed validation samples every epoch and log the pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from .. import viz
from ..analyzers import Analyzer, analyzers, create_analyzer
from ..analyzers.registry import parameters_of
from ..analyzers.validation import check_choice, check_positive_int
from ..logging.images import log_images

ON_ERROR = ("warn", "raise")


def _pick(batch: Any, key: int | str | None) -> Tensor | None:
    """The part of a batch at ``key``: a tuple/list index or a dict key."""
    if key is None:
        return None
    if isinstance(batch, Mapping):
        return batch[key]
    if isinstance(batch, Tensor):
        return batch if key == 0 else None
    return batch[key]


def normalize_analyzers(spec: Sequence[str] | Mapping[str, Mapping[str, Any]]
                        ) -> dict[str, dict[str, Any]]:
    """Check analyzer names and keywords; return ``{name: kwargs}``.

    Raises ``KeyError`` for an unknown name and ``TypeError`` for an unknown keyword, listing
    the valid ones, so that a bad configuration fails before training starts.
    """
    if isinstance(spec, str):
        spec = [spec]
    specs = dict(spec) if isinstance(spec, Mapping) else {name: {} for name in spec}
    if not specs:
        raise ValueError("analyzers is empty; give at least one analyzer name")
    for name, kwargs in specs.items():
        if name not in analyzers:
            raise KeyError(f"unknown analyzer {name!r}; valid names: {sorted(analyzers)}")
        unknown = sorted(set(kwargs or {}) - set(parameters_of(analyzers[name])))
        if unknown:
            raise TypeError(f"analyzer {name!r} got unknown parameter(s) {unknown}; "
                            f"it accepts {sorted(parameters_of(analyzers[name]))}")
    return {name: dict(kwargs or {}) for name, kwargs in specs.items()}


class ExplainCallback(Callback):
    """Explain a fixed set of validation samples at the end of every validation epoch.

    The first ``num_samples`` validation samples become the probe set (kept in the
    checkpoint). Each ``every_n_epochs`` epochs, every analyzer explains them on the model's
    device and a picture (one row per sample: the input, then one heatmap column per
    analyzer, with true and predicted labels) goes to every logger of the Trainer under
    ``explain/<analyzer>`` (one column) and ``explain/all`` (all columns).

    Parameters
    ----------
    analyzers:
        Analyzer names (see ``lit_explain.analyzers``), or ``{name: kwargs}``.
    num_samples:
        Number of probe samples.
    every_n_epochs:
        Explain every this many epochs.
    input_key, target_key:
        Where the input and the label sit in a batch: a tuple index or a dict key
        (``target_key=None``: no labels).
    analysis_batch_size:
        At most this many probe samples go through an analyzer at once.
    on_error:
        ``"warn"``: a failing analyzer or logger warns once, naming the cause, and training
        goes on. ``"raise"``: it raises.

    Notes
    -----
    Training is unchanged: analyses take gradients with ``torch.autograd.grad`` in eval
    mode with frozen parameters and restore every flag; their randomness uses their own
    generators. The sanity check is skipped.
    """

    def __init__(self, analyzers: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradient",),
                 num_samples: int = 8, every_n_epochs: int = 1, input_key: int | str = 0,
                 target_key: int | str | None = 1, analysis_batch_size: int = 64,
                 on_error: str = "warn") -> None:
        super().__init__()
        self.analyzer_specs = normalize_analyzers(analyzers)
        check_positive_int("num_samples", num_samples)
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("analysis_batch_size", analysis_batch_size)
        check_choice("on_error", on_error, ON_ERROR)
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.input_key = input_key
        self.target_key = target_key
        self.analysis_batch_size = analysis_batch_size
        self.on_error = on_error
        self.probe_inputs: Tensor | None = None
        self.probe_targets: Tensor | None = None
        self._analyzers: dict[str, Analyzer] = {}
        self._warned: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(analyzers=sorted(self.analyzer_specs),
                                        num_samples=self.num_samples)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._analyzers = {name: create_analyzer(name, pl_module, **kwargs)
                           for name, kwargs in self.analyzer_specs.items()}

    # Probe samples: the first validation samples seen, with no extra pass over the data.

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or self._probe_full():
            return
        inputs = _pick(batch, self.input_key)
        targets = _pick(batch, self.target_key)
        missing = self.num_samples - (0 if self.probe_inputs is None else len(self.probe_inputs))
        inputs = inputs[:missing].detach().cpu().clone()
        self.probe_inputs = inputs if self.probe_inputs is None else torch.cat(
            [self.probe_inputs, inputs])
        if targets is not None:
            targets = targets[:missing].detach().cpu().clone()
            self.probe_targets = targets if self.probe_targets is None else torch.cat(
                [self.probe_targets, targets])

    def _probe_full(self) -> bool:
        return self.probe_inputs is not None and len(self.probe_inputs) >= self.num_samples

    # Analysis and logging.

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.probe_inputs is None:
            return
        if trainer.current_epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        inputs = self.probe_inputs.to(pl_module.device)
        with torch.inference_mode(False), torch.no_grad():
            predictions = pl_module(inputs.clone()).reshape(len(inputs), -1).argmax(1).cpu()
        maps = {}
        for name, analyzer in self._analyzers.items():
            result = self._guarded(f"analyzer {name!r}", lambda a=analyzer: self._explain(a))
            if result is not None:
                maps[name] = result
        if not maps:
            return
        step = trainer.global_step
        pictures = {f"explain/{name}": {name: m} for name, m in maps.items()}
        pictures["explain/all"] = maps
        for tag, chosen in pictures.items():
            image = viz.to_uint8_hwc(viz.explanation_grid(self.probe_inputs, chosen,
                                                  labels=self.probe_targets,
                                                  predictions=predictions))
            self._guarded("logging", lambda t=tag, i=image: log_images(
                trainer.loggers, t, [i], step, default_root=trainer.default_root_dir))

    def _explain(self, analyzer: Analyzer) -> Tensor:
        device = next(iter(analyzer.model.parameters()), torch.empty(0)).device
        chunks = [analyzer.analyze(chunk.to(device)).cpu()
                  for chunk in self.probe_inputs.split(self.analysis_batch_size)]
        result = torch.cat(chunks)
        if not torch.isfinite(result).all():
            raise FloatingPointError("the attribution map contains NaN or infinite values")
        return result

    def _guarded(self, what: str, action):
        """Run ``action``; on failure warn once per cause (or raise with on_error='raise')."""
        try:
            return action()
        except Exception as error:
            if self.on_error == "raise":
                raise
            key = f"{what}: {type(error).__name__}"
            if key not in self._warned:
                self._warned.add(key)
                rank_zero_warn(f"ExplainCallback: {what} failed and is skipped "
                               f"({type(error).__name__}: {error}); training goes on. "
                               f"Set on_error='raise' to stop instead.")
            return None

    # Checkpoint state: tensors and plain types only.

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probe_inputs": self.probe_inputs, "probe_targets": self.probe_targets}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe_inputs = state_dict.get("probe_inputs")
        self.probe_targets = state_dict.get("probe_targets")
