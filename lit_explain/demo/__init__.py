"""The demo: a small CNN learning scikit-learn's 8×8 digits, explained while it trains.

``DigitsDataModule`` ships its data with scikit-learn (``pip install lit-explain[demo]``),
so the demo runs with no download. ``DigitsClassifier`` is a plain LightningModule.
``CleverHansDigits`` (:mod:`lit_explain.demo.clever_hans`) plants a watermark shortcut.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..analyzers.validation import check_positive_int


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """The 1,797 digits as (N, 1, 8, 8) float images in [0, 1] and (N,) int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits demo needs scikit-learn: pip install 'lit-explain[demo]'"
                          ) from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's 8×8 digits split into training and validation sets.

    Parameters
    ----------
    batch_size:
        Samples per batch.
    val_fraction:
        Fraction of the 1,797 images held out for validation.
    seed:
        Seed of the split (its own generator).
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} is not valid; expected 0 < f < 1")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.class_names = [str(digit) for digit in range(10)]

    def setup(self, stage: str | None = None) -> None:
        images, labels = load_digits_tensors()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        held_out = int(len(images) * self.val_fraction)
        val, train = order[:held_out], order[held_out:]
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def digits_cnn(channels: int = 16, num_classes: int = 10) -> nn.Sequential:
    """Conv-ReLU ×2, max-pool, conv-ReLU, max-pool, dense-ReLU, dense: 8×8 in, logits out.

    Parameters
    ----------
    channels:
        Width of the first convolutions (the third has twice as many).
    num_classes:
        Outputs (logits).
    """
    check_positive_int("channels", channels)
    check_positive_int("num_classes", num_classes)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))


class Classifier(L.LightningModule):
    """Cross-entropy training with Adam, and validation loss and accuracy, for any network
    that returns class logits: subclasses build the network and define ``forward``.

    Parameters
    ----------
    learning_rate:
        Adam's learning rate.
    """

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]  # further parts (masks) are for the callback
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class DigitsClassifier(Classifier):
    """A small CNN classifying the 8×8 digits; returns logits.

    Parameters
    ----------
    channels:
        Width of the first convolutions.
    learning_rate:
        Adam's learning rate.
    """

    def __init__(self, channels: int = 16, learning_rate: float = 3e-3) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.net = digits_cnn(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


from .clever_hans import CleverHansDigits, stamp_watermark, watermark_mask  # noqa: E402
from .transformers import TextTransformer, TinyViT, ViTDigitsClassifier  # noqa: E402

__all__ = ["CleverHansDigits", "Classifier", "DigitsClassifier", "DigitsDataModule",
           "TextTransformer", "TinyViT", "ViTDigitsClassifier", "digits_cnn",
           "load_digits_tensors", "stamp_watermark", "watermark_mask"]
