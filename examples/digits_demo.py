"""The digits demo as a plain Python script: a small CNN explained while it learns.

What it shows
-------------
A 4-layer CNN (:func:`lit_explain.demo.digits_cnn`) learns scikit-learn's 8×8 handwritten
digits (shipped with scikit-learn, no download). An :class:`lit_explain.ExplainCallback`
keeps 8 validation digits (stratified over the classes) as probe samples and, after every
validation epoch, explains them with the gradient (Simonyan et al. 2014), Guided Backprop
(Springenberg et al. 2015), Integrated Gradients (Sundararajan et al. 2017), LRP-ε and LRP
preset A (Bach et al. 2015; Kotikalapudi et al. 2019) and DeepLIFT (Shrikumar et al. 2017);
it scores each analyzer's maps with pixel flipping (Samek et al. 2017) and sparseness
(Chalasani et al. 2020), and tracks how much they drift from epoch to epoch. The same run
as ``lit-explain fit --config configs/digits.yaml``, written out as a script. Early epochs
give noisy maps; as accuracy climbs the LRP maps settle on the strokes that tell one digit
from another, and the drift curves flatten.

How to look at it
-----------------
::

    python examples/digits_demo.py                  # about 6 s on two CPU cores
    tensorboard --logdir runs                       # then open the IMAGES tab

``explain/all`` is one grid per epoch (rows: samples, with true/predicted label; columns:
the input, then one heatmap per analyzer; red = evidence for the predicted class, blue =
against it); ``explain/<analyzer>`` holds one column each, ``explain/<analyzer>/drift`` and
``explain/<analyzer>/pixel_flipping_curve`` are plots. The SCALARS tab has the metric and
drift values per epoch. Drag the step slider above an image to watch the explanations
change while the model trains.
"""

from __future__ import annotations

import lightning as L

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = ["gradient", "guided_backprop", "integrated_gradients", "lrp.epsilon",
             "lrp.sequential_preset_a", "deep_lift"]
METRICS = {"pixel_flipping": {"steps": 32}, "sparseness": {}}


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    args = example_parser(__doc__.split("\n")[0], max_epochs=8).parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(channels=16, learning_rate=3e-3)
    data = DigitsDataModule(batch_size=64)
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 sample_selection="stratified", metrics=METRICS,
                                 drift=["previous", "first"], class_names=data.class_names)
    return fit_example(model, data, args, "digits_demo", [explain],
                       f"{args.num_samples} validation digits")

if __name__ == "__main__":
    main()
