"""Where LRP relevance is lost: the conservation report.

LRP sends the selected output's value back through the network; rules that conserve it
(z without bias, w², flat, z⁺ ...) deliver all of it to the input, while biases (z, ε and αβ
with bias) and stabilisers (the ε of LRP-ε, the safe division) absorb part of it, and the
sum of the map is then smaller (or larger) than the logit. :func:`conservation_report` runs
the analysis once with ``reverse_keep_tensors`` and returns, per sample, the relevance at the
output, the sum of the map, the difference (what biases and stabilisers absorbed) and the
same numbers for every layer, so that the layer where relevance goes missing can be read
off. The layer sums are those of ``analyzer.reversed_tensors``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from .base import Analyzer, NeuronSelection
from .diagnostics import OUTPUT_KEY, per_sample_sum, sample_index


@dataclass
class LayerConservation:
    """The relevance of one layer, summed per sample.

    Attributes
    ----------
    output:
        (N,) relevance arriving at the layer's output.
    input:
        (N,) relevance leaving it at its input.
    """

    output: Tensor
    input: Tensor

    @property
    def absorbed(self) -> Tensor:
        """(N,) relevance absorbed by the layer's bias and its rule's stabiliser."""
        return self.output - self.input


@dataclass
class ConservationReport:
    """Per sample: the relevance at the output and at the input, and what was absorbed.

    Attributes
    ----------
    output:
        (N,) relevance the backward pass starts from: the selected logit (``"all"``: the sum
        of the logits; Deep Taylor: ``max(logit, 0)``).
    input:
        (N,) sum of the map at the input.
    layers:
        Module path → :class:`LayerConservation`, in the order of the forward pass.
    map:
        The map itself (what :meth:`Analyzer.analyze` returned).
    """

    output: Tensor
    input: Tensor
    layers: dict[str, LayerConservation]
    map: Tensor

    @property
    def absorbed(self) -> Tensor:
        """(N,) relevance absorbed by biases and stabilisers on the way: output − input."""
        return self.output - self.input

    def __str__(self) -> str:
        rows = [("layer", "output", "input", "absorbed")]
        rows.append(("<model output>", f"{float(self.output.mean()):.4g}", "", ""))
        for path, layer in reversed(self.layers.items()):
            rows.append((path, f"{float(layer.output.mean()):.4g}",
                         f"{float(layer.input.mean()):.4g}",
                         f"{float(layer.absorbed.mean()):.4g}"))
        rows.append(("<map>", "", f"{float(self.input.mean()):.4g}",
                     f"{float(self.absorbed.mean()):.4g} in all"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                 for row in rows]
        return "relevance per layer (mean over samples), backward order\n" + "\n".join(lines)


def conservation_report(analyzer: Analyzer, x: Tensor,
                        neuron_selection: NeuronSelection = None) -> ConservationReport:
    """Explain ``x`` with an LRP analyzer and report where relevance is lost.

    Parameters
    ----------
    analyzer:
        An LRP or Deep Taylor analyzer (``lrp.*``, ``deep_taylor*``).
    x:
        The input batch.
    neuron_selection:
        As for :meth:`Analyzer.analyze`.

    Returns
    -------
    ConservationReport
        Per-sample sums at the output, at the input and at every layer. For a sequential
        network the absorbed amounts of the layers add up to the total. The analyzer's
        ``reverse_clip_values`` and ``reverse_project_bottleneck_layers`` are off for the
        report: it measures what the rules absorb. Relevance lost at an operation that is no
        kernel layer (the z-rule of an average pooling over a dead channel under the w² and
        flat rules, whose relevance does not vanish where the activation does) shows in the
        total, not in a layer's row.

    Raises
    ------
    TypeError
        For an analyzer that is not relevance-based (the gradient family, PatternNet):
        its maps are not relevance, conservation means nothing for them.
    """
    from .lrp import LRP

    if not isinstance(analyzer, LRP):
        raise TypeError(f"conservation_report needs an LRP or Deep Taylor analyzer; "
                        f"{analyzer.name or type(analyzer).__name__!r} does not propagate "
                        f"relevance")
    options = analyzer.reverse
    # the rules' own losses: the diagnostics that rescale relevance (clipping, projection)
    # are off for the report, or their rescaling would read as absorbed relevance
    analyzer.reverse = dataclasses.replace(options, keep_tensors=True, clip_values=None,
                                           project_bottleneck_layers=False)
    try:
        # which sample each element of a layer's tensors belongs to (a sequence-first layer
        # holds them on its second axis, a flattened one in blocks or interleaved)
        copies = None if len(x) == 1 else analyzer.first_sample_copies(x, neuron_selection)
        result = analyzer.analyze(x, neuron_selection)
        inputs, outputs = analyzer.reversed_tensors, analyzer._reversed_outputs
    finally:
        analyzer.reverse = options

    def summed(relevance: Tensor, path: str, output: bool) -> Tensor:
        return per_sample_sum(relevance, sample_index(path, relevance, copies, output))

    layers = {path: LayerConservation(summed(outputs[path], path, True),
                                      summed(relevance, path, False))
              for path, relevance in inputs.items() if path in outputs}
    return ConservationReport(per_sample_sum(outputs[OUTPUT_KEY]), per_sample_sum(result),
                              layers, result)
