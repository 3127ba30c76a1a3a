"""An MLP on tabular data: attribution maps over features instead of pixels.

What it shows
-------------
A three-layer MLP learns scikit-learn's wine data set (178 wines, 13 chemical measurements,
3 cultivars; shipped with scikit-learn, no download). Inputs are 1-D feature vectors, so
the :class:`lit_explain.ExplainCallback` renders each explanation as a 1-D strip: one cell
per feature, coloured by its relevance for the predicted cultivar. Features are
standardised with the training set's mean and standard deviation, so Input×Gradient and
LRP relevances are relative to the average wine. Which measurements decide the class
(proline, flavanoids and colour intensity are the usual suspects) can be read off the
strips, and compared across analyzers.

The feature order, for reading the strips left to right::

    0 alcohol, 1 malic_acid, 2 ash, 3 alcalinity_of_ash, 4 magnesium, 5 total_phenols,
    6 flavanoids, 7 nonflavanoid_phenols, 8 proanthocyanins, 9 color_intensity, 10 hue,
    11 od280/od315_of_diluted_wines, 12 proline

How to look at it
-----------------
::

    python examples/tabular_mlp.py                  # about 10 s on two CPU cores
    tensorboard --logdir runs                       # IMAGES tab, tags explain/*
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
from lit_explain.demo import Classifier
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = ["gradient", "input_t_gradient", "integrated_gradients", "lrp.epsilon",
             "lrp.alpha_1_beta_0", "deep_lift"]
#: Pixel flipping on features: remove (zero = the training mean) the most relevant first.
METRICS = {"pixel_flipping": {"steps": 13}, "sparseness": {}}
CULTIVARS = ["cultivar 0", "cultivar 1", "cultivar 2"]


def load_wine_tensors() -> tuple[Tensor, Tensor, list[str]]:
    """The 178 wines as (N, 13) float32 features, (N,) int64 labels, and the feature names."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    return (torch.tensor(wine.data, dtype=torch.float32),
            torch.tensor(wine.target, dtype=torch.long), list(wine.feature_names))


class WineDataModule(L.LightningDataModule):
    """The wine data, split with a seeded generator and standardised on the training part."""

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed

    def setup(self, stage: str | None = None) -> None:
        features, labels, self.feature_names = load_wine_tensors()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        held_out = int(len(labels) * self.val_fraction)
        val, train = order[:held_out], order[held_out:]
        mean, std = features[train].mean(0), features[train].std(0)
        features = (features - mean) / std
        self.train_set = TensorDataset(features[train], labels[train])
        self.val_set = TensorDataset(features[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class WineMLP(Classifier):
    """Linear-ReLU-Linear-ReLU-Linear on the 13 standardised features; returns logits."""

    def __init__(self, num_features: int = 13, num_classes: int = 3, hidden: int = 32,
                 learning_rate: float = 1e-2) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = example_parser(__doc__.split("\n")[0], max_epochs=20, num_samples=12)
    parser.add_argument("--every-n-epochs", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = WineMLP()
    data = WineDataModule(seed=args.seed)
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 every_n_epochs=args.every_n_epochs,
                                 sample_selection="stratified", metrics=METRICS,
                                 class_names=CULTIVARS)
    return fit_example(model, data, args, "tabular_mlp", [explain],
                       f"{args.num_samples} validation wines", log_every_n_steps=2)

if __name__ == "__main__":
    main()
