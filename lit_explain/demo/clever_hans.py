"""A Clever-Hans variant of the digits: a watermark that gives one class away.

Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really
learn" (Nature Communications 10, 2019), found a classifier that recognised horses by a
copyright tag in the corner of the photos. This data set plants the same kind of shortcut
in scikit-learn's 8×8 digits: a 2×2 bright patch in the bottom-right corner (where digits
have no ink), stamped on most images of one class and on few of the others, in training
and validation alike. The control stamps as many images, independently of the label. Each
batch is ``(image, label, mask)``; the mask marks the watermark's pixels (all False on an
unstamped image), so :class:`lit_explain.ExplainCallback` (``mask_key=2``) can track the
watermark's share of the relevance while the model trains.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["CleverHansDigits", "stamp_watermark", "watermark_mask"]

#: Rows and columns of the watermark in an 8×8 digit: the bottom-right 2×2 corner.
WATERMARK = (slice(6, 8), slice(6, 8))


def watermark_mask(n: int, stamped: Tensor | None = None, size: int = 8) -> Tensor:
    """Masks ``(n, size, size)`` of the watermark, True on its pixels where ``stamped``."""
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[(slice(None), *WATERMARK)] = True
    if stamped is not None:
        masks &= stamped.view(-1, 1, 1)
    return masks


def stamp_watermark(images: Tensor, stamped: Tensor) -> tuple[Tensor, Tensor]:
    """Images ``(N, 1, 8, 8)`` with the watermark (value 1) where ``stamped``, and the masks."""
    masks = watermark_mask(len(images), stamped, images.shape[-1])
    out = images.clone()
    out[masks[:, None]] = 1.0
    return out, masks


class CleverHansDigits(L.LightningDataModule):
    """The 8×8 digits with a watermark that is confounded with one class (or, as control, not).

    Parameters
    ----------
    confounded:
        ``True``: the watermark is on a fraction ``p_class`` of the images of
        ``watermark_class`` and ``p_other`` of the others. ``False`` (the control): on each
        image with the same overall probability, whatever its label.
    watermark_class:
        The class the watermark gives away.
    p_class, p_other:
        Stamping probabilities of the confounded variant.
    batch_size, val_fraction, seed:
        As :class:`lit_explain.demo.DigitsDataModule`; ``seed`` also draws the stamps.
    watermarked_first:
        Put the stamped validation images first, so that an ``ExplainCallback`` with
        ``sample_selection="first"`` explains images that carry the watermark.

    Attributes (after ``setup``)
    ----------------------------
    val_clean:
        The validation images without any watermark, with their labels: the accuracy on
        them is what the shortcut costs once it is gone.
    """

    def __init__(self, confounded: bool = True, watermark_class: int = 8,
                 p_class: float = 0.95, p_other: float = 0.02, batch_size: int = 64,
                 val_fraction: float = 0.2, seed: int = 0, watermarked_first: bool = True
                 ) -> None:
        super().__init__()
        for name, p in (("p_class", p_class), ("p_other", p_other)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name}={p!r} is not valid; expected 0 <= p <= 1")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} is not valid; expected 0 < f < 1")
        if watermark_class not in range(10):
            raise ValueError(f"watermark_class={watermark_class!r} is not valid; expected 0..9")
        self.confounded = confounded
        self.watermark_class = watermark_class
        self.p_class, self.p_other = p_class, p_other
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.watermarked_first = watermarked_first
        self.class_names = [str(digit) for digit in range(10)]

    def stamp_probability(self, labels: Tensor) -> Tensor:
        """Each image's probability of carrying the watermark."""
        is_class = labels == self.watermark_class
        if self.confounded:
            return torch.where(is_class, self.p_class, self.p_other)
        overall = 0.1 * self.p_class + 0.9 * self.p_other  # as many stamps, about
        return torch.full(labels.shape, overall)

    def setup(self, stage: str | None = None) -> None:
        from . import load_digits_tensors

        images, labels = load_digits_tensors()
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(images), generator=generator)
        stamped = torch.rand(len(images), generator=generator) < self.stamp_probability(labels)
        marked, masks = stamp_watermark(images, stamped)
        held_out = int(len(images) * self.val_fraction)
        val, train = order[:held_out], order[held_out:]
        if self.watermarked_first:
            val = torch.cat([val[stamped[val]], val[~stamped[val]]])
        self.train_set = TensorDataset(marked[train], labels[train], masks[train])
        self.val_set = TensorDataset(marked[val], labels[val], masks[val])
        self.val_clean = TensorDataset(images[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
