"""PyTorch twins of the networks behind iNNvestigate's reference attributions.

``tests/data/innvestigate/<name>.npz`` (a copy of the project's ``shared/reference/``)
holds the input batch, the weights in PyTorch layout, the architecture and iNNvestigate's
attribution per ``"<analyzer>|<selection mode>"``; see its README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "innvestigate"
NETS = ("mlp", "cnn_small")
INDEX = 2  # the neuron_selection the "index" entries were made with


def _layers(arch: dict, weights: list[tuple[np.ndarray, np.ndarray]]) -> list[nn.Module]:
    kernels = iter(weights)
    layers: list[nn.Module] = []
    for spec in arch["layers"]:
        kind = spec[0]
        if kind in ("dense", "conv"):
            weight, bias = (torch.tensor(a) for a in next(kernels))
            if kind == "dense":
                layer = nn.Linear(weight.shape[1], weight.shape[0])
            else:
                size = weight.shape[2]
                layer = nn.Conv2d(weight.shape[1], weight.shape[0], size,
                                  padding=size // 2 if spec[3] == "same" else 0)
            layer.weight.data.copy_(weight)
            layer.bias.data.copy_(bias)
            layers.append(layer)
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(spec[1]))
        elif kind == "avgpool":
            layers.append(nn.AvgPool2d(spec[1]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        else:
            raise ValueError(f"unknown layer kind {kind!r} in the reference architecture")
    return layers


def reference_model(name: str) -> tuple[nn.Sequential, torch.Tensor, dict]:
    """The model, the input batch and the whole reference file (as a dict) for ``name``."""
    path = REFERENCE_DIR / f"{name}.npz"
    data = dict(np.load(path))
    count = sum(1 for key in data if key.startswith("w"))
    weights = [(data[f"w{i}"], data[f"b{i}"]) for i in range(count)]
    model = nn.Sequential(*_layers(json.loads(str(data["arch"])), weights)).eval()
    return model, torch.tensor(data["x"]), data


def reference_entries(name: str) -> list[tuple[str, str]]:
    """``(analyzer entry, selection mode)`` pairs stored for the net ``name``."""
    keys = np.load(REFERENCE_DIR / f"{name}.npz").files
    return [tuple(key.split("|")) for key in keys if "|" in key]


def analyzer_kwargs(data: dict, entry: str) -> tuple[str, dict]:
    """The registry name and keyword arguments a reference entry was made with."""
    kwargs = json.loads(str(data["kwargs"]))[entry]
    return ("gradient" if entry == "gradient.abs" else entry), kwargs


def relative_error(result: torch.Tensor, reference: np.ndarray) -> float:
    """max |result − reference| / max |reference| (the reference README's tolerance)."""
    expected = torch.tensor(reference)
    scale = expected.abs().max().clamp(min=1e-12)
    return float((result - expected).abs().max() / scale)
