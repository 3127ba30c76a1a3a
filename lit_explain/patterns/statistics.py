"""The statistics behind a pattern and the pattern formula (Kindermans et al. 2018).

For one kernel layer with weight vector ``w`` per output neuron, input rows ``x`` (the
layer's input, or one input patch of a convolution or transposed convolution) and
pre-activations without bias ``y = wᵀx``, the signal estimator of "Learning how to explain
neural networks: PatternNet and PatternAttribution" (Kindermans et al., ICLR 2018) is

    a = cov(x, y) / (wᵀ cov(x, y)),    cov(x, y) = E[xy] − E[x] E[y],

with the expectations taken over the rows where the neuron's mask is on: every row for the
``"linear"`` estimator, the rows where the layer's output is positive for ``"relu"``
(``"relu.positive"``), non-positive for ``"relu.negative"`` (the paper's two-component
estimator ``a₊``). :class:`LayerStatistics` keeps only *sums and counts*, so that two of them
add: across batches, epochs, processes and DDP ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

PATTERN_TYPES = ("linear", "relu", "relu.positive", "relu.negative")

#: Statistics are accumulated in double precision: E[xy] − E[x]E[y] cancels.
STATE_DTYPE = torch.float64


def neuron_mask(pattern_type: str, output: Tensor) -> Tensor | None:
    """Which rows count for each neuron, from the layer's real output (``None``: all)."""
    if pattern_type == "linear":
        return None
    if pattern_type in ("relu", "relu.positive"):
        return output > 0
    return output <= 0


@dataclass
class LayerStatistics:
    """Sums and counts of one kernel layer, per output neuron.

    Attributes
    ----------
    rows:
        Scalar: how many input rows (samples × positions) the layer has seen.
    count:
        ``(out,)``: rows where each neuron's mask was on.
    sum_x, sum_xy:
        ``(out, D)``: masked sums of the input row and of input row × pre-activation.
    sum_y:
        ``(out,)``: masked sum of the pre-activation (without bias).
    """

    rows: Tensor
    count: Tensor
    sum_x: Tensor
    sum_y: Tensor
    sum_xy: Tensor

    @classmethod
    def zeros(cls, out_features: int, row_size: int,
              device: torch.device | str | None = None) -> LayerStatistics:
        """Empty statistics for ``out_features`` neurons with ``row_size`` inputs each."""
        with torch.inference_mode(False):
            def new(*shape: int) -> Tensor:
                return torch.zeros(shape, dtype=STATE_DTYPE, device=device)

            return cls(new(), new(out_features), new(out_features, row_size), new(out_features),
                       new(out_features, row_size))

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        """The state as ``(name, tensor)`` pairs, in a fixed order."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def to(self, device: torch.device | str) -> LayerStatistics:
        """A copy on ``device`` (or ``self`` where it already lives there)."""
        if self.count.device == torch.device(device):
            return self
        with torch.inference_mode(False):
            return LayerStatistics(**{name: t.to(device) for name, t in self.tensors()})

    def add_(self, other: LayerStatistics) -> LayerStatistics:
        """Add ``other``'s sums and counts into ``self`` (in place)."""
        for name, tensor in self.tensors():
            value = getattr(other, name)
            if value.shape != tensor.shape:
                raise ValueError(f"cannot merge statistics: {name} has shape "
                                 f"{tuple(value.shape)}, expected {tuple(tensor.shape)}")
            tensor.add_(value.to(tensor.device, STATE_DTYPE))
        return self

    def zero_(self) -> LayerStatistics:
        for _, tensor in self.tensors():
            tensor.zero_()
        return self

    def add_batch_(self, rows: int, count: Tensor, sum_x: Tensor, sum_y: Tensor,
                   sum_xy: Tensor) -> None:
        """Add one batch's sums (see :func:`~lit_explain.patterns.layers.batch_sums`)."""
        self.rows.add_(rows)
        self.count.add_(count)
        self.sum_x.add_(sum_x)
        self.sum_y.add_(sum_y)
        self.sum_xy.add_(sum_xy)

    def pattern(self, weight: Tensor) -> Tensor:
        """The pattern ``a = cov(x, y) / (wᵀ cov(x, y))`` per neuron, shaped like ``weight``.

        ``weight`` holds one row per neuron (the first axis; for a transposed convolution,
        the rows of :func:`~lit_explain.patterns.layers.weight_rows`). Neurons whose mask was
        never on, or whose ``wᵀ cov(x, y)`` is zero, get a zero pattern (they carry no signal
        the estimator can see).
        """
        w = weight.detach().reshape(len(weight), -1).to(self.sum_x.device, STATE_DTYPE)
        count = self.count.clamp(min=1)[:, None]
        mean_x = self.sum_x / count
        mean_y = self.sum_y[:, None] / count
        cov = self.sum_xy / count - mean_x * mean_y  # (out, D)
        norm = (w * cov).sum(dim=1, keepdim=True)
        safe = norm != 0
        a = torch.where(safe, cov / torch.where(safe, norm, torch.ones_like(norm)),
                        torch.zeros_like(cov))
        return a.reshape(weight.shape).to(weight.dtype)
