"""Perturbation metrics on token inputs: tokens are deleted by replacing their id.

The model is a bag of embeddings: the score of class c is the sum over the sentence of a
per-token weight ``W[token, c]``, so replacing token t by the mask id changes the score by
exactly ``W[mask, c] - W[t, c]`` and every curve is a sum of table entries, by hand.
"""

from __future__ import annotations

import csv
import glob
import os

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
from lit_explain.demo import Classifier
from lit_explain.metrics import (
    FaithfulnessCorrelation,
    InsertionDeletion,
    PixelFlipping,
    RegionPerturbation,
)

# Class-1 weights of the ids 0..5; class 0 has the negatives. Id 0 is the mask/padding id.
CLASS_1 = [0.0, 1.0, 5.0, -2.0, 3.0, 0.5]


class Bag(Classifier):
    """Score of class c = Σ_i W[token_i, c] (an embedding of width 2 summed over tokens)."""

    def __init__(self, weights: list[float] = CLASS_1, learning_rate: float = 0.0) -> None:
        super().__init__(learning_rate)
        w = torch.tensor(weights)
        self.table = nn.Embedding(len(weights), 2)
        with torch.no_grad():
            self.table.weight.copy_(torch.stack([-w, w], 1))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.table(tokens).sum(1)


X = torch.tensor([[1, 2, 3, 4]])  # class-1 contributions 1, 5, -2, 3: score 7
A = torch.tensor([[0.3, 0.9, 0.1, 0.6]])  # ranks tokens 2, 4, 1, 3 (fractions matter)


def test_pixel_flipping_deletes_the_most_relevant_tokens_first_by_the_mask_id():
    m = PixelFlipping(Bag(), mask_token_id=0)
    m.update(X, A, target=1)
    # order 2, 4, 1, 3: remove 5, then 3, then 1, then -2 from 7
    expected = torch.tensor([7.0, 2.0, -1.0, -2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(m.curve(), expected)  # steps=None: one step per token
    torch.testing.assert_close(m.compute(), torch.tensor((0 + 5 + 8 + 9 + 7) / 5,
                                                         dtype=torch.float64))


class BoolBag(Bag):
    """Two ids given as bools (a presence mask), looked up as 0 and 1."""

    def forward(self, tokens: Tensor) -> Tensor:
        return self.table(tokens.long()).sum(1)


def test_bool_ids_are_tokens_as_the_analyzers_read_them():
    """The analyzers read bool ids; the token metrics refused them, and the float path they
    suggested failed inside torch."""
    x = torch.tensor([[True, False, True, True]])  # class-1 contributions 1, 0, 1, 1
    m = PixelFlipping(BoolBag(), mask_token_id=0)
    m.update(x, torch.tensor([[0.3, 0.9, 0.1, 0.6]]), target=1)
    # order 2 (id 0: removes 0), 4, 1, 3
    torch.testing.assert_close(m.curve(), torch.tensor([3.0, 3.0, 2.0, 1.0, 0.0],
                                                       dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask_token_id=2 does not fit .*\(largest id 1\)"):
        PixelFlipping(BoolBag(), mask_token_id=2).update(x, torch.rand(1, 4), target=1)


def test_a_mask_id_with_its_own_weight_replaces_rather_than_removes():
    # id 5 weighs 0.5: deleting token t changes the score by 0.5 - W[t]
    m = PixelFlipping(Bag(), mask_token_id=5, steps=2)
    curves = m.sample_curves(X, A, target=1)
    torch.testing.assert_close(curves, torch.tensor([[7.0, 2.5, 0.0]], dtype=torch.float64))


def test_least_relevant_first_and_token_windows():
    m = RegionPerturbation(Bag(), mask_token_id=0, order="lerf", steps=2)
    # lerf: token 3 (0.1) first, then token 1 (0.3)
    torch.testing.assert_close(m.sample_curves(X, A, target=1),
                               torch.tensor([[7.0, 9.0, 8.0]], dtype=torch.float64))
    # windows of two tokens: (1, 2) sums 1.2, (3, 4) sums 0.7 -> delete (1, 2) first
    m = RegionPerturbation(Bag(), mask_token_id=0, region_shape=2)
    torch.testing.assert_close(m.sample_curves(X, A, target=1),
                               torch.tensor([[7.0, 1.0, 0.0]], dtype=torch.float64))


def test_deletion_and_insertion_curves_by_hand():
    m = InsertionDeletion(Bag(), mask_token_id=0, softmax=False, steps=4)
    c = m.sample_curves(X, A, target=1)
    torch.testing.assert_close(c["deletion"], torch.tensor([[7.0, 2, -1, -2, 0]],
                                                           dtype=torch.float64))
    # insertion starts from "0 0 0 0" (score 0) and puts back 2, 4, 1, 3
    torch.testing.assert_close(c["insertion"], torch.tensor([[0.0, 5, 8, 9, 7]],
                                                            dtype=torch.float64))
    torch.testing.assert_close(c["fraction"], torch.tensor([0, 0.25, 0.5, 0.75, 1],
                                                           dtype=torch.float64))
    m.update(X, A, target=1)
    trapezoid = {"deletion_auc": 0.25 * (7 / 2 + 2 - 1 - 2 + 0 / 2),
                 "insertion_auc": 0.25 * (0 / 2 + 5 + 8 + 9 + 7 / 2)}
    for key, value in m.compute().items():
        assert float(value) == pytest.approx(trapezoid[key])


def test_exact_token_contributions_correlate_perfectly_with_their_deletion():
    # With a = W[x, 1] the score drop of any deleted subset is the sum of its a: r = 1.
    x = torch.tensor([[1, 2, 3, 4, 5, 2], [4, 4, 1, 3, 5, 3]])
    exact = torch.tensor(CLASS_1)[x]
    m = FaithfulnessCorrelation(Bag(), mask_token_id=0, n_subsets=10, subset_size=2)
    m.update(x, exact, target=1)
    torch.testing.assert_close(m.compute(), torch.tensor(1.0, dtype=torch.float64))


def test_token_inputs_without_a_mask_id_are_refused_naming_the_option():
    """Each metric's example is its own (insertion_deletion's named pixel_flipping)."""
    with pytest.raises(ValueError, match=r"PixelFlipping\(\.\.\., mask_token_id=0\), or "
                                         r"metrics=\{'pixel_flipping': \{'mask_token_id'"):
        PixelFlipping(Bag()).update(X, A, target=1)
    with pytest.raises(ValueError, match=r"metrics=\{'insertion_deletion': \{'mask_token_id'"):
        InsertionDeletion(Bag()).update(X, A, target=1)


def test_a_mask_id_on_float_inputs_is_refused():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="mask_token_id=0 applies to token inputs"):
        PixelFlipping(model, mask_token_id=0).update(torch.randn(2, 4), torch.randn(2, 4))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_a_bad_mask_id_fails_at_construction(bad):
    with pytest.raises(ValueError, match="mask_token_id="):
        PixelFlipping(Bag(), mask_token_id=bad)


def test_the_callback_scores_token_maps_by_the_mask_id(tmp_path):
    # Input x Gradient of the bag is W[x_i, target] per token (the analyses start at the
    # embedding's output and sum over it): pixel flipping's AOPC is then, per sentence, the
    # mean over k = 0..L of the sum of the k largest contributions.
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, len(CLASS_1), (8, 5), generator=g)
    model = Bag()  # learning rate 0: the weights stay those above
    labels = model(tokens).argmax(1)  # the labels are the classes the maps explain
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=8)
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv")
    callback = lx.ExplainCallback(analyzers=["input_t_gradient", "gradient"], num_samples=4,
                                  metrics={"pixel_flipping": {"mask_token_id": 0}},
                                  drift=[], on_error="raise")
    L.Trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1, logger=logger,
              enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, accelerator="cpu",
              default_root_dir=str(tmp_path)).fit(model, loader, loader)
    probe = callback.probe.inputs
    w = torch.tensor(CLASS_1, dtype=torch.float64)
    scores = torch.stack([-w, w], 1)[probe]  # (4, 5, 2)
    predicted = scores.sum(1).argmax(1)
    contributions = scores[torch.arange(4), :, predicted]
    top = contributions.sort(1, descending=True).values.cumsum(1)
    expected = torch.cat([torch.zeros(4, 1, dtype=torch.float64), top], 1).mean()
    (path,) = glob.glob(os.path.join(logger.log_dir, "metrics.csv"))
    with open(path) as f:
        rows = [row for row in csv.DictReader(f)
                if row.get("explain/input_t_gradient/pixel_flipping")]
    assert float(rows[-1]["explain/input_t_gradient/pixel_flipping"]) == pytest.approx(
        float(expected), rel=1e-5)
    assert rows[-1]["explain/gradient/pixel_flipping"]  # the batched curves of both maps


def test_the_callback_drops_a_token_metric_without_a_mask_id_naming_it(tmp_path):
    tokens = torch.randint(1, len(CLASS_1), (4, 5), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(tokens, torch.zeros(4, dtype=torch.long)), batch_size=4)
    callback = lx.ExplainCallback(analyzers=["input_t_gradient"], num_samples=2,
                                  metrics=["pixel_flipping"], drift=[])
    with pytest.warns(UserWarning, match="pixel_flipping.*mask_token_id="):
        L.Trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1, logger=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, accelerator="cpu",
                  default_root_dir=str(tmp_path)).fit(Bag(), loader, loader)


class MeanOfWords(Bag):
    """The mean of the non-padding tokens' weights: 0 / 0 for a sentence of padding only."""

    def forward(self, tokens: Tensor) -> Tensor:
        words = (tokens != 0).sum(1, keepdim=True)
        return self.table(tokens).sum(1) / words


def test_a_score_the_model_cannot_give_fails_loudly_rather_than_a_nan_aopc():
    # the last step deletes every token: the model divides 0 by 0
    with pytest.raises(FloatingPointError, match="1 of 5 perturbed inputs"):
        PixelFlipping(MeanOfWords(), mask_token_id=0).update(X, A, target=1)
    m = PixelFlipping(MeanOfWords(), mask_token_id=0, steps=3)  # a word is left: finite
    m.update(X, A, target=1)
    # delete 2, 4, 1: means 7/4, 2/3, -1/2, -2/1
    assert float(m.compute()) == pytest.approx((0 + (7 / 4 - 2 / 3) + (7 / 4 + 1 / 2)
                                                 + (7 / 4 + 2)) / 4)
