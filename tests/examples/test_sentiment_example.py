"""examples/sentiment_tokens.py: a token model trains with the callback and logs per-token maps."""

from __future__ import annotations

import torch
from test_examples import load_example, logged_images, png_size

import lit_explain as lx
from lit_explain.demo import sentences


def test_the_sentiment_example_logs_token_strips(tmp_path, capsys):
    example = load_example("sentiment_tokens")
    log_dir = example.main(["--max-epochs", "2", "--limit-train-batches", "4",
                            "--limit-val-batches", "1", "--num-train", "256",
                            "--num-samples", "4", "--save-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert log_dir in out and "relevance per layer" in out
    images = logged_images(log_dir)
    events = images["explain/all"]  # one picture, a column per analyzer
    assert [e.step for e in events] == [3, 7]  # every epoch, at val_loss's step
    for analyzer in example.ANALYZERS:  # token deletion (mask_token_id=0) scored every map,
        # plotted once at the end of training
        assert len(images[f"explain/{analyzer}/pixel_flipping_curve"]) == 1, analyzer
    for event in events:
        assert png_size(event.encoded_image_string) == (event.width, event.height)
        assert event.width > 4 * event.height // 4  # strips: wider than tall per row


def test_the_synthetic_task_is_decided_by_the_sentiment_words():
    tokens, labels = sentences.make_sentences(200, seed=3)
    positive = torch.isin(tokens, torch.tensor(list(sentences.POSITIVE))).sum(1)
    negative = torch.isin(tokens, torch.tensor(list(sentences.NEGATIVE))).sum(1)
    assert torch.equal(labels, (positive > negative).long())
    assert bool((positive != negative).all()) and tokens.dtype == torch.int64


def test_a_trained_text_cnn_puts_relevance_on_the_sentiment_words():
    example = load_example("sentiment_tokens")
    torch.manual_seed(0)
    model = example.TextCNN()
    tokens, labels = example.make_sentences(2048, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for batch, target in zip(tokens.split(64), labels.split(64), strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(batch), target).backward()
            optimizer.step()
    test, _ = example.make_sentences(32, seed=1)
    relevance = lx.create_analyzer("lrp.epsilon", model, epsilon=0.01).analyze(test)
    sentiment = torch.isin(test, torch.arange(1, 9))
    top = relevance.abs().argmax(1)
    assert sentiment[torch.arange(len(test)), top].float().mean() > 0.9
