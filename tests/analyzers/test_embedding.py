"""Token models: per-token maps from the embedding's output, checked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lit_explain as lx

E = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]])  # 4 tokens, D = 2
W = torch.tensor([[1.0, -1.0, 2.0, 0.5], [0.5, 1.0, -1.0, 3.0]])  # 2 outputs, 2 tokens × D
B = torch.tensor([0.25, -0.5])


class TwoTokens(nn.Module):
    """Embed two tokens, concatenate their vectors, one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(4, 2)
        self.out = nn.Linear(4, 2)
        with torch.no_grad():
            self.embedding.weight.copy_(E)
            self.out.weight.copy_(W)
            self.out.bias.copy_(B)

    def forward(self, tokens):
        assert not tokens.is_floating_point()  # the model always sees its tokens
        return self.out(self.embedding(tokens).flatten(1))


TOKENS = torch.tensor([[1, 3], [2, 1]])


def by_hand(tokens: torch.Tensor, output: int, times_input: bool) -> torch.Tensor:
    """Σ_d over each token's embedding axis of w (gradient) or e·w (Input × Gradient)."""
    e = E[tokens]  # (N, 2, D)
    w = W[output].reshape(2, 2)  # (token, D)
    return (e * w if times_input else w.expand_as(e)).sum(-1)


def test_gradient_is_the_sum_of_the_embedding_gradient():
    model = TwoTokens()
    result = lx.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
        TOKENS, neuron_selection=1)
    assert result.shape == TOKENS.shape and result.dtype == torch.float32
    torch.testing.assert_close(result, by_hand(TOKENS, 1, times_input=False))


@pytest.mark.parametrize("name", ["input_t_gradient", "lrp.z", "lrp.epsilon"])
def test_relevance_per_token_is_embedding_times_gradient(name):
    # One linear layer: LRP-z gives R_i = x_i w_i (z / z), Input × Gradient x_i w_i.
    model = TwoTokens()
    result = lx.create_analyzer(name, model, neuron_selection_mode="index").analyze(
        TOKENS, neuron_selection=0)
    torch.testing.assert_close(result, by_hand(TOKENS, 0, times_input=True))


def test_the_layer_after_the_embedding_is_the_input_layer():
    # Flat on the input layer spreads the output's value evenly: z/4 per entry, z/2 per token.
    model = TwoTokens()
    result = lx.create_analyzer("lrp", model, rule="Z", input_layer_rule="Flat",
                                neuron_selection_mode="index").analyze(TOKENS, 0)
    z = model(TOKENS)[:, 0].detach()
    torch.testing.assert_close(result, (z / 2)[:, None].expand(2, 2))


def test_integrated_gradients_and_deep_lift_attribute_the_embedded_tokens():
    # A linear model: both equal Input × Gradient against a zero embedding.
    model = TwoTokens()
    expected = by_hand(TOKENS, 1, times_input=True)
    for name in ("integrated_gradients", "deep_lift"):
        result = lx.create_analyzer(name, model, neuron_selection_mode="index").analyze(TOKENS, 1)
        torch.testing.assert_close(result, expected, msg=name)


class Bag(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(4, 2, mode=mode, padding_idx=0)
        self.out = nn.Linear(2, 2)
        with torch.no_grad():
            self.bag.weight.copy_(E)
            self.out.weight.copy_(W[:, :2])
            self.out.bias.copy_(B)
        self.weights = None

    def forward(self, tokens):
        return self.out(self.bag(tokens, per_sample_weights=self.weights))


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bags_give_each_token_its_share(mode):
    model = Bag(mode)
    tokens = torch.tensor([[1, 3, 0], [2, 2, 1]])  # 0 is padding
    weights = torch.tensor([[2.0, 1.0, 5.0], [1.0, 0.5, 1.0]])
    if mode == "sum":
        model.weights = weights
    else:
        weights = torch.ones(2, 3)
    kept = (tokens != 0).float() * weights
    count = (tokens != 0).sum(1, keepdim=True).float() if mode == "mean" else 1.0
    expected = (E[tokens] * W[0, :2]).sum(-1) * kept / count
    for name in ("input_t_gradient", "lrp.z", "lrp.epsilon"):
        result = lx.create_analyzer(name, model, neuron_selection_mode="index").analyze(tokens, 0)
        torch.testing.assert_close(result, expected, msg=name)
    # the map sums to the output minus the bias (Input × Gradient of a linear model)
    torch.testing.assert_close(expected.sum(1), model(tokens)[:, 0].detach() - B[0])


class Sentiment(nn.Module):
    """Embedding, a padding mask computed from the tokens, conv, ReLU, masked mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 8, padding_idx=0)
        self.conv = nn.Conv1d(8, 6, 3, padding=1)
        self.out = nn.Linear(6, 2)

    def forward(self, tokens):
        mask = (tokens != 0).float()[:, None]
        h = torch.relu(self.conv(self.embedding(tokens).transpose(1, 2)))
        return self.out((h * mask).sum(2) / mask.sum(2).clamp(min=1))


EVERY = ["gradient", "input_t_gradient", "smoothgrad", "integrated_gradients", "deep_lift",
         "deconvnet", "guided_backprop", "lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
         "lrp.sequential_preset_a_flat", "deep_taylor", "input", "random"]


@pytest.mark.parametrize("name", EVERY)
def test_every_analyzer_gives_one_value_per_token(name):
    model = Sentiment()
    tokens = torch.randint(1, 20, (3, 7))
    tokens[0, 5:] = 0
    kwargs = {"augment_by_n": 4} if name == "smoothgrad" else (
        {"steps": 4} if name == "integrated_gradients" else {})
    with torch.no_grad():
        result = lx.create_analyzer(name, model, **kwargs).analyze(tokens)
    assert result.shape == (3, 7) and result.is_floating_point()
    assert torch.isfinite(result).all()
    assert all(len(m._forward_hooks) == len(m._forward_pre_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_pattern_analyzers_fit_on_tokens(name):
    model = Sentiment()
    data = torch.randint(0, 20, (64, 7))
    result = lx.create_analyzer(name, model).fit(data, progress=False).analyze(data[:3])
    assert result.shape == (3, 7) and torch.isfinite(result).all()


def test_keep_tensors_on_a_token_model():
    model = Sentiment()
    analyzer = lx.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    tokens = torch.randint(1, 20, (2, 7))
    result = analyzer.analyze(tokens)
    assert list(analyzer.reversed_tensors) == ["conv", "out"]
    # the conv's input is the embedding output: summed over its axis, it is the map
    torch.testing.assert_close(analyzer.reversed_tensors["conv"].sum(1), result)


def test_integer_input_without_an_embedding_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"no nn.Embedding or nn.EmbeddingBag"):
        lx.create_analyzer("gradient", model).analyze(torch.ones(2, 3, dtype=torch.long))


def test_a_forward_that_needs_more_than_the_ids_says_so():
    # (it said the model applied no embedding; the missing argument was a hidden cause)
    class NeedsAMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding, self.out = nn.Embedding(5, 2), nn.Linear(2, 3)

        def forward(self, ids, attention_mask):
            return self.out((self.embedding(ids) * attention_mask[..., None]).sum(1))

    with pytest.raises(TypeError, match=r"raised before applying its embedding "
                                        r"\('embedding'\).*missing 1 required positional "
                                        r"argument: 'attention_mask'"):
        lx.create_analyzer("gradient", NeedsAMask()).analyze(torch.ones(2, 3, dtype=torch.long))


def test_an_embedding_applied_to_reshaped_tokens_is_refused():
    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(5, 2)
            self.out = nn.Linear(2, 2)

        def forward(self, tokens):
            return self.out(self.embedding(tokens.t()).mean(0))

    with pytest.raises(ValueError, match=r"'embedding' \(Embedding\) ids of shape \(3, 2\)"):
        lx.create_analyzer("gradient", Transposed()).analyze(torch.ones(2, 3, dtype=torch.long))


def test_a_max_bag_gives_each_dimension_to_its_winning_token():
    model = Bag("max")
    model.bag.padding_idx = None
    tokens = torch.tensor([[1, 3, 2], [2, 2, 1]])
    e = E[tokens]  # (N, L, D)
    winners = e.argmax(dim=1)  # first on ties, as max-pooling
    won = torch.nn.functional.one_hot(winners, 3).transpose(1, 2).float()  # (N, L, D)
    for name, times_input in (("gradient", False), ("lrp.z", True)):
        result = lx.create_analyzer(name, model, neuron_selection_mode="index").analyze(tokens, 1)
        expected = (won * W[1, :2] * (e if times_input else 1)).sum(-1)
        torch.testing.assert_close(result, expected, msg=name)


def test_the_forward_guard_runs_the_first_sample_of_a_token_batch():
    # The guard compares the analysed output with the model's own on the first sample: the
    # model is called on that sample's tokens, not on the whole batch again.
    model = TwoTokens()
    batch_sizes = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    tokens = torch.tensor([[1, 3], [2, 1], [3, 3], [0, 2]])
    result = lx.create_analyzer("lrp.epsilon", model, neuron_selection_mode="index").analyze(
        tokens, neuron_selection=0)
    torch.testing.assert_close(result, by_hand(tokens, 0, times_input=True))
    # the analysed forward, then the guard's, with gradients and without (which it compares)
    assert batch_sizes[-3:] == [4, 1, 1]


class Positions(nn.Module):
    """Token, position and token-type embeddings summed, written in several orders: the
    input embedding is the one applied to the tokens, whichever runs first."""

    def __init__(self, order: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.order = order
        self.token, self.position, self.kind = (nn.Embedding(9, 4), nn.Embedding(5, 4),
                                                nn.Embedding(2, 4))
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, tokens):
        n, length = tokens.shape
        kind = self.kind(torch.zeros_like(tokens))
        if self.order == "position_1d":  # minGPT: one row of positions, broadcast
            h = self.position(torch.arange(length)) + self.token(tokens) + kind
        elif self.order == "position_first":
            h = self.position(torch.arange(length).expand(n, length)) + self.token(tokens) + kind
        else:  # the token embedding first
            h = self.token(tokens) + self.position(torch.arange(length)) + kind
        return self.out(torch.relu(self.fc(h)).mean(1))


@pytest.mark.parametrize("order", ["position_1d", "position_first"])
@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients",
                                  "deep_lift", "lrp.epsilon", "lrp.z", "lrp.alpha_2_beta_1"])
def test_the_input_embedding_is_the_one_applied_to_the_tokens(name, order):
    tokens = torch.tensor([[1, 4, 2, 8, 3], [5, 5, 7, 1, 6]])
    kwargs = {"steps": 4} if name == "integrated_gradients" else {}
    expected = lx.create_analyzer(name, Positions("token_first"), **kwargs).analyze(tokens)
    result = lx.create_analyzer(name, Positions(order), **kwargs).analyze(tokens)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


class PreviousToken(Positions):
    """The token embedding applied to each position's previous token too, before or after
    the tokens themselves (one function): only the call on the tokens is the input's."""

    def forward(self, tokens):
        if self.order == "previous_first":
            h = self.token(tokens.roll(1, 1)) + self.token(tokens)
        else:
            h = self.token(tokens) + self.token(tokens.roll(1, 1))
        return self.out(torch.relu(self.fc(h)).mean(1))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients",
                                  "deep_lift", "lrp.epsilon", "lrp.z"])
def test_other_ids_embedded_first_are_not_the_input(name):
    tokens = torch.tensor([[1, 4, 2, 8, 3], [5, 5, 7, 1, 6]])
    kwargs = {"steps": 4} if name == "integrated_gradients" else {}
    expected = lx.create_analyzer(name, PreviousToken("tokens_first"), **kwargs).analyze(tokens)
    result = lx.create_analyzer(name, PreviousToken("previous_first"), **kwargs).analyze(tokens)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


class PreviousTokenAttention(nn.Module):
    """Features of each position's previous token (the token embedding on the rolled ids)
    added to the tokens' own, then self-attention: a map that depends on which call of the
    embedding is the input's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.token = nn.Embedding(20, 8)
        self.previous, self.mix, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def features(self, tokens):
        return self.previous(self.token(tokens.roll(1, -1))) + self.token(tokens)

    def forward(self, tokens):
        h = self.features(tokens)
        q = self.mix(h).unsqueeze(1)
        h = h + torch.nn.functional.scaled_dot_product_attention(q, q, q).squeeze(1)
        return self.out(torch.nn.functional.silu(h)).mean(1)


class SeparatePreviousTokenAttention(PreviousTokenAttention):
    """The same function with the previous tokens embedded by a module of their own (the
    same weights): its input embedding is not in doubt."""

    def __init__(self) -> None:
        super().__init__()
        self.token_again = nn.Embedding(20, 8)
        self.token_again.weight = self.token.weight

    def features(self, tokens):
        return self.previous(self.token_again(tokens.roll(1, -1))) + self.token(tokens)


class TokenTypesAttention(PreviousTokenAttention):
    """A token-type embedding of zeros first, then the token embedding of a view of the ids
    (as Hugging Face models make them): for all-zero ids both get ids equal to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = nn.Embedding(2, 8)

    def features(self, tokens):
        return self.previous(self.kind(torch.zeros_like(tokens))) + self.token(
            tokens.view(tokens.shape))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "lrp.epsilon"])
def test_the_previous_tokens_are_not_the_input_where_they_equal_the_tokens(name):
    """Rows of one token repeated: the rolled ids equal the tokens, yet only the call on the
    tokens themselves is the input's (the call found, not the first with equal ids)."""
    tokens = torch.tensor([[3, 3, 3, 3, 3], [5, 5, 5, 5, 5]])
    expected = lx.create_analyzer(name, SeparatePreviousTokenAttention()).analyze(tokens)
    result = lx.create_analyzer(name, PreviousTokenAttention()).analyze(tokens)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", [TokenTypesAttention(), PreviousTokenAttention()],
                         ids=["zeros_equal_the_token_type_ids", "constant_rows"])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1"])
def test_an_analysis_after_another_embedding_choice_is_not_replayed_from_it(name, model):
    """Which embedding takes the relevance may depend on the ids' values (all zeros equal the
    token-type ids): an analysis after one that chose another is made afresh."""
    first = torch.zeros(2, 5, dtype=torch.long) if isinstance(model, TokenTypesAttention) \
        else torch.full((2, 5), 3)
    tokens = torch.tensor([[1, 4, 2, 8, 3], [5, 5, 7, 1, 6]])
    analyzer = lx.create_analyzer(name, model)
    analyzer.analyze(first)
    torch.testing.assert_close(analyzer.analyze(tokens),
                               lx.create_analyzer(name, model).analyze(tokens))


class CastsItsIds(nn.Module):
    """Casts its ids to int64 (a copy for int32 ids), then embeds token types (zeros) and
    each position's previous token before the tokens themselves (sliced whole)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.token = nn.Embedding(2, 6), nn.Embedding(12, 6)
        self.previous, self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, ids):
        ids = ids.long()
        h = self.kind(torch.zeros_like(ids)) + self.previous(self.token(ids.roll(1, -1)))
        return self.out(torch.relu(self.fc(h + self.token(ids[:, :])))).sum(1)


class ClearlyEmbedsItsIds(CastsItsIds):
    """The same function, the previous tokens embedded by a module of their own (the same
    weights) and the int64 input embedded as it is: its input embedding is not in doubt."""

    def __init__(self) -> None:
        super().__init__()
        self.token_again = nn.Embedding(12, 6)
        self.token_again.weight = self.token.weight

    def forward(self, ids):
        h = self.kind(torch.zeros_like(ids)) + self.previous(self.token_again(ids.roll(1, -1)))
        return self.out(torch.relu(self.fc(h + self.token(ids)))).sum(1)


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "lrp.epsilon"])
@pytest.mark.parametrize("ids", [[[0, 0, 0, 0], [0, 0, 0, 0]], [[3, 3, 3, 3], [5, 5, 5, 5]]],
                         ids=["all_zero", "repeated"])
def test_ids_cast_or_sliced_by_the_model_are_the_input_whatever_their_values(name, ids):
    """The input's ids as they are (cast, copied, viewed, sliced whole) are the input's; ids
    made otherwise (zeros, the previous tokens) are not, even where their values are equal
    (ids the model copies gave the relevance to the token-type or previous-token
    embedding)."""
    ids = torch.tensor(ids)
    torch.testing.assert_close(lx.create_analyzer(name, CastsItsIds()).analyze(ids.int()),
                               lx.create_analyzer(name, ClearlyEmbedsItsIds()).analyze(ids))


KEEPING_PLACES = {
    "clamp": lambda ids: ids.clamp(max=11), "clip": lambda ids: ids.clip(max=11),
    "abs": lambda ids: ids.abs(), "float_and_back": lambda ids: ids.type_as(
        torch.zeros(())).long(), "remainder": lambda ids: ids % 12,
    "where": lambda ids: torch.where(ids < 12, ids, 1),
    "masked_fill": lambda ids: ids.masked_fill(ids >= 12, 1),
    "truncation": lambda ids: ids[:, :512], "new_axis": lambda ids: ids[None].squeeze(0),
    "flattened": lambda ids: ids.reshape(-1).reshape(ids.shape)}


class TypesThenTokens(CastsItsIds):
    """A token-type embedding of zeros, then the token embedding of what ``prepare`` makes of
    the ids (an out-of-vocabulary guard, a truncation, ...)."""

    def __init__(self, prepare: str = "") -> None:
        super().__init__()
        self.prepare = KEEPING_PLACES.get(prepare, lambda ids: ids)

    def forward(self, ids):
        h = self.kind(torch.zeros_like(ids)) + self.token(self.prepare(ids))
        return self.out(torch.relu(self.fc(h))).sum(1)


@pytest.mark.parametrize("prepare", sorted(KEEPING_PLACES))
@pytest.mark.parametrize("name", ["input_t_gradient", "lrp.epsilon"])
def test_ids_kept_in_place_by_the_model_are_the_input_on_an_all_zero_batch(name, prepare):
    """Ids that the model guards, truncates or reshapes without moving any are the input's,
    also where a token-type embedding of zeros gets equal ids first (it took the relevance)."""
    ids = torch.zeros(2, 4, dtype=torch.long)
    torch.testing.assert_close(lx.create_analyzer(name, TypesThenTokens(prepare)).analyze(ids),
                               lx.create_analyzer(name, TypesThenTokens()).analyze(ids))


class RewritesItsIds(CastsItsIds):
    def __init__(self, rewrites: bool = True) -> None:
        super().__init__()
        self.rewrites = rewrites

    def forward(self, ids):
        if self.rewrites:
            ids = ids.clone()
            ids[ids >= 12] = 1  # an out-of-vocabulary id, written in place
        return self.out(torch.relu(self.fc(self.token(ids)))).sum(1)


def test_ids_rewritten_in_place_are_not_the_input_where_they_differ():
    """A copy of the ids holds them as they are only while its values are theirs: an
    out-of-vocabulary id written over is refused as before (it gave all-zero maps)."""
    ids = torch.tensor([[3, 4, 5]])  # (no id written over: the input's ids)
    torch.testing.assert_close(
        lx.create_analyzer("input_t_gradient", RewritesItsIds()).analyze(ids),
        lx.create_analyzer("input_t_gradient", RewritesItsIds(rewrites=False)).analyze(ids))
    with pytest.raises(ValueError, match="no embedding receives the input's ids"):
        lx.create_analyzer("gradient", RewritesItsIds()).analyze(torch.tensor([[3, 40, 5]]))


def test_input_times_gradient_of_a_token_model_is_the_embedding_times_its_gradient():
    model, tokens = Positions("position_first"), torch.tensor([[1, 4, 2, 8, 3]])
    e = model.token(tokens).detach().requires_grad_(True)
    handle = model.token.register_forward_hook(lambda module, args, output: e)
    try:
        logits = model(tokens)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits[0, logits[0].argmax()], e)
    torch.testing.assert_close(lx.create_analyzer("input_t_gradient", model).analyze(tokens),
                               (e * gradient).sum(-1).detach())


class EmbedsTwice(Positions):
    """The tokens embedded once and used twice, or embedded twice (one function)."""

    def forward(self, tokens):
        first = self.token(tokens)
        second = self.token(tokens) if self.order == "twice" else first
        return self.out(torch.relu(self.fc(first) + self.fc(second * 0.5)).mean(1))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients",
                                  "smoothgrad", "deep_lift", "lrp.epsilon", "lrp.z"])
def test_tokens_embedded_twice_give_the_map_of_one_embedding_used_twice(name):
    """The second call's relevance was lost (maps 0.6–0.7 off); its output is the same
    vectors (Input×Gradient: e · de, with e feeding both uses)."""
    tokens = torch.tensor([[1, 4, 2, 8, 3], [5, 5, 7, 1, 6]])
    kwargs = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"noise_scale": 0.0}}
    expected = lx.create_analyzer(name, EmbedsTwice("once"), **kwargs.get(name, {})
                                  ).analyze(tokens)
    result = lx.create_analyzer(name, EmbedsTwice("twice"), **kwargs.get(name, {})
                                ).analyze(tokens)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


class TwoTables(nn.Module):
    """The tokens embedded by two tables, concatenated (or by one table as wide as both)."""

    def __init__(self, tables: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tables = nn.ModuleList(nn.Embedding(9, 4 // tables) for _ in range(tables))
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, tokens):
        h = torch.cat([table(tokens) for table in self.tables], dim=-1)
        return self.out(torch.relu(self.fc(h)).mean(1))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "lrp.z"])
def test_a_second_table_on_the_tokens_is_refused(name):
    """Its relevance was lost (maps 0.6 off, half the logit missing), with no word."""
    tokens = torch.tensor([[1, 4, 2, 8, 3], [5, 5, 7, 1, 6]])
    with pytest.raises(lx.NotAnalyzableModelError, match=r"'tables.1' \(Embedding\) besides "
                                                         r"'tables.0'.*one table"):
        lx.create_analyzer(name, TwoTables(2)).analyze(tokens)
    assert lx.create_analyzer(name, TwoTables(1)).analyze(tokens).shape == tokens.shape


@pytest.mark.parametrize("bag", [False, True])
def test_an_embedding_that_renormalises_its_weight_is_refused_before_it_runs(bag):
    model = Positions("token_first")
    if bag:
        model.kind = nn.EmbeddingBag(2, 4, max_norm=1.0)
        model.kind.forward = lambda ids: torch.zeros(4)  # (refused before any call)
    else:
        model.position.max_norm = 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(lx.NotAnalyzableModelError, match="max_norm"):
        lx.create_analyzer("lrp.epsilon", model).analyze(torch.tensor([[1, 4, 2, 8, 3]]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
