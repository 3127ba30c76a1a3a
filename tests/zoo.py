"""A zoo of hand-written networks as people actually train them (no torchvision).

Each factory in :data:`ZOO` returns ``(model, x)``: the model in eval mode and an input
batch, the same every call (seeded, without touching the global RNG streams). The nets are
narrow and their inputs small, so that every model × every analyzer runs in seconds on CPU.

BatchNorm layers get non-trivial running statistics and affine parameters: the statistics
are first collected from calibration batches (so activations stay on a sane scale through
13 layers), then perturbed, and γ, β drawn at random, so that BatchNorm canonization has
something to do.

Keys and what each exercises:

- ``vgg16_bn``: 13 conv → BatchNorm2d → nn.ReLU, max-pooling, dense head with dropout.
- ``resnet18``: torchvision-style BasicBlocks, downsample shortcuts, ``F.relu``,
  ``out += identity``, adaptive average pooling.
- ``bottleneck``: bottleneck blocks with ``torch.add(out, identity)``.
- ``mobilenet_v2``: depthwise convolutions, ``nn.ReLU6(inplace=True)``, inverted residuals
  ``x + block(x)``.
- ``densenet``: dense blocks with ``torch.cat``, pre-activation BN → ReLU → conv (BatchNorm
  that follows no kernel layer), transitions with average pooling.
- ``unet``: a U-Net-style classifier: ``nn.ConvTranspose2d`` and ``F.interpolate``
  upsampling, ``torch.cat`` skips, global pooling, dense head.
- ``audio1d``: Conv1d / BatchNorm1d / MaxPool1d on a (N, 1, 256) waveform.
- ``normalized_input``: ``x = (x - self.mean) / self.std`` (buffers) inside ``forward``.
- ``inplace_statements``: bare in-place statements whose results are not assigned.
- ``tuple_output``: returns ``(logits, aux)``; ``dict_output``: ``{"logits", "aux"}``.
- ``float64``: a ResNet-like net and its input in float64.
- ``channels_last``: a BatchNorm CNN and its input in ``torch.channels_last``.
- ``leaky_relu``: in-place LeakyReLU after convolutions (LRP's identity rule; no
  Deconvnet/Guided Backprop rule).
- ``convnext``: ConvNeXt blocks: patchify stem, GroupNorm, depthwise 7×7, LayerNorm on
  channels-last activations, ``nn.Linear`` as pointwise convolutions on 4-D tensors, GELU,
  layer scale.
- ``efficientnet``: MBConv blocks: SiLU, depthwise convolutions, squeeze-and-excitation
  (``x * sigmoid(...)``), residual adds.

:func:`compiled` wraps a model with ``torch.compile(backend="eager")``;
:func:`out_of_place_twin` gives ``inplace_statements``' computation written out of place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

CLASSES = 5

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _randomise_batch_norms(model: nn.Module, calibration: list[Tensor],
                           generator: torch.Generator) -> None:
    """Running statistics from ``calibration`` batches, then perturbed; random γ and β."""
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in calibration:
            model(batch)
        for norm in norms:
            shape, dtype = norm.running_mean.shape, norm.running_mean.dtype

            def draw(low: float, high: float, shape=shape, dtype=dtype) -> Tensor:
                return low + (high - low) * torch.rand(shape, generator=generator, dtype=dtype)

            spread = norm.running_var.sqrt()
            norm.running_mean += 0.3 * spread * torch.randn(shape, generator=generator,
                                                            dtype=dtype)
            norm.running_var *= draw(0.6, 1.6)
            norm.weight.copy_(draw(0.5, 1.5))
            norm.bias.copy_(0.2 * torch.randn(shape, generator=generator, dtype=dtype))
            norm.momentum = 0.1
    model.eval()


def _build(seed: int, make: Callable[[], nn.Module], input_shape: tuple[int, ...],
           batch: int = 2, dtype: torch.dtype = torch.float32,
           image: bool = False) -> tuple[nn.Module, Tensor]:
    """The model (parameters from ``seed``), calibrated, eval mode, and an input batch:
    standard normal, or uniform in [0, 1] with ``image=True``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make().to(dtype)
    draw = torch.rand if image else torch.randn
    calibration = [draw(8, *input_shape, generator=generator, dtype=dtype) for _ in range(2)]
    _randomise_batch_norms(model, calibration, generator)
    x = draw(batch, *input_shape, generator=generator, dtype=dtype)
    return model, x


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
             bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(cout)]


# VGG-16-BN ---------------------------------------------------------------------------------

class VGG16BN(nn.Module):
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015), narrow: 13 conv-BN-ReLU."""

    PLAN = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16, "M")

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in self.PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item),
                           nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 16), nn.ReLU(True), nn.Dropout(),
            nn.Linear(16, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ResNet-18 -----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """torchvision's BasicBlock: ``F.relu`` and ``out += identity``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


class ResNet(nn.Module):
    """ResNet-18's layout (two blocks per stage, four stages), narrow."""

    def __init__(self, block: type[nn.Module] = BasicBlock,
                 widths: tuple[int, ...] = (4, 8, 8, 16), blocks: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = [block(cin, width, stride)] + [block(width, width) for _ in
                                                   range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            cin = width
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Bottleneck ResNet ---------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """torchvision's Bottleneck (1×1, 3×3, 1×1), written with ``torch.add``."""

    def __init__(self, cin: int, width: int, stride: int = 1, expansion: int = 2) -> None:
        super().__init__()
        cout = width * expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(torch.add(out, identity))


class BottleneckNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 8), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(Bottleneck(8, 4), Bottleneck(8, 4),
                                    Bottleneck(8, 8, stride=2), Bottleneck(16, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


# MobileNetV2 ---------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1×1, depthwise 3×3, project 1×1; ``x + block(x)``."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 3) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(3, 8, 3, 2), nn.ReLU6(inplace=True),
            InvertedResidual(8, 8, 1), InvertedResidual(8, 12, 2), InvertedResidual(12, 12, 1),
            *_conv_bn(12, 24, 1), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ConvNeXt and EfficientNet ----------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    """Depthwise 7×7, LayerNorm over channels (channels last), Linear → GELU → Linear as
    pointwise convolutions, layer scale, ``x + block(x)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), \
            nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.stem_norm = nn.GroupNorm(1, 16)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.head_norm, self.head = nn.LayerNorm(16), nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.head(self.head_norm(x.mean((-2, -1))))


class MBConv(nn.Module):
    """EfficientNet's block: expand 1×1, depthwise 3×3, SiLU, squeeze-and-excitation
    (``x * sigmoid(fc(pool(x)))``), project 1×1, ``x + block(x)``."""

    def __init__(self, dim: int, expand: int = 4) -> None:
        super().__init__()
        hidden = dim * expand
        self.expand = nn.Sequential(*_conv_bn(dim, hidden, 1), nn.SiLU())
        self.depthwise = nn.Sequential(*_conv_bn(hidden, hidden, 3, groups=hidden), nn.SiLU())
        self.squeeze, self.excite = nn.Conv2d(hidden, 4, 1), nn.Conv2d(4, hidden, 1)
        self.project = nn.Sequential(*_conv_bn(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.depthwise(self.expand(x))
        scale = torch.sigmoid(self.excite(F.silu(self.squeeze(F.adaptive_avg_pool2d(h, 1)))))
        return x + self.project(h * scale)


class EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 8, 3, 2), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(8), MBConv(8))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


# DenseNet ------------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """Pre-activation BN → ReLU → conv on the concatenation of all earlier features."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), DenseBlock(3, 8, growth), Transition(8 + 3 * growth, 10),
            DenseBlock(3, 10, growth), nn.BatchNorm2d(10 + 3 * growth))
        self.classifier = nn.Linear(10 + 3 * growth, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.classifier(torch.flatten(out, 1))


# U-Net classifier ----------------------------------------------------------------------------

def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout), nn.ReLU(inplace=True),
                         *_conv_bn(cout, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Encoder, transposed-convolution and interpolation decoder with ``torch.cat`` skips,
    then global pooling and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = _double_conv(3, 4), _double_conv(4, 8)
        self.bottom = _double_conv(8, 16)
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec2 = _double_conv(16, 8)
        self.reduce1 = nn.Conv2d(8, 4, 1)
        self.dec1 = _double_conv(8, 4)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        up = F.interpolate(self.reduce1(d2), scale_factor=2, mode="bilinear",
                           align_corners=False)
        d1 = self.dec1(torch.cat([up, e1], dim=1))
        return self.head(F.adaptive_avg_pool2d(d1, 1).flatten(1))


# 1-D audio -----------------------------------------------------------------------------------

class Audio1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, kernel, stride in ((1, 4, 9, 2), (4, 8, 5, 1), (8, 8, 5, 1),
                                          (8, 16, 3, 1)):
            layers += [nn.Conv1d(cin, cout, kernel, stride, kernel // 2), nn.BatchNorm1d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool1d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


# Input normalisation inside forward -------------------------------------------------------

class NormalizedInput(nn.Module):
    """``(x - mean) / std`` with buffers, then ``body`` (conv/BN/ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1))
        self.body = nn.Sequential(
            *_conv_bn(3, 8, bias=True), nn.ReLU(), nn.MaxPool2d(2),
            *_conv_bn(8, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        return self.body(x)


# Bare in-place statements -------------------------------------------------------------------

class InplaceStatements(nn.Module):
    """In-place statements whose results are not assigned: the model as it computes is what
    an analysis must explain. :class:`OutOfPlaceTwin` computes the same, out of place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(6, 8, 1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x)
        h.relu_()
        h = self.conv2(h)
        F.relu(h, inplace=True)
        out = self.conv3(h)
        y = self.shortcut(h)
        out.add_(y)
        out.mul_(0.5)
        out.relu_()
        out = F.max_pool2d(out, 2)
        z = self.conv4(out)
        z[:, 0] = 0
        z.relu_()
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


class OutOfPlaceTwin(nn.Module):
    """``InplaceStatements``' computation with every in-place statement written out of place
    (shares the parameters)."""

    def __init__(self, model: InplaceStatements) -> None:
        super().__init__()
        self.model = model
        mask = torch.ones(1, model.conv4.out_channels, 1, 1)
        mask[:, 0] = 0
        self.register_buffer("mask", mask.to(model.conv4.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        h = F.relu(m.conv1(x))
        h = F.relu(m.conv2(h))
        out = F.relu((m.conv3(h) + m.shortcut(h)) * 0.5)
        out = F.max_pool2d(out, 2)
        z = F.relu(m.conv4(out) * self.mask)
        return m.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


def out_of_place_twin(model: InplaceStatements) -> OutOfPlaceTwin:
    """The same function as ``model`` (``inplace_statements``), written out of place."""
    return OutOfPlaceTwin(model).eval()


# Outputs other than a logits tensor ---------------------------------------------------------

class SmallBNCNN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, dense head; ``aux`` is a second head of logits' shape."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv_bn(3, 6), nn.ReLU(), nn.MaxPool2d(2),
                                      *_conv_bn(6, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                      nn.Flatten())
        self.fc = nn.Linear(32, CLASSES)
        self.aux_fc = nn.Linear(32, CLASSES)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(x)
        return self.fc(features), self.aux_fc(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(x)[0]


class TupleOutput(SmallBNCNN):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.heads(x)


class DictOutput(SmallBNCNN):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        logits, aux = self.heads(x)
        return {"logits": logits, "aux": aux}


class Checkpointed(nn.Module):
    """A model whose forward pass runs under activation checkpointing, as in training with
    ``torch.utils.checkpoint`` (reentrant or not): the same function as ``model``."""

    def __init__(self, model: nn.Module, reentrant: bool) -> None:
        super().__init__()
        self.model, self.reentrant = model, reentrant

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.model, x, use_reentrant=self.reentrant)


class Head(nn.Module):
    """One output of a multi-output model, as a plain logits model: ``key`` of its output."""

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[self.key]


# In-place LeakyReLU --------------------------------------------------------------------------

class LeakyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


# Multi-branch and multi-resolution nets --------------------------------------------------

def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, kernel, stride), nn.ReLU(inplace=True))


class InceptionBlock(nn.Module):
    """GoogLeNet's block: 1×1, 1×1→3×3, 1×1→5×5 and max-pool→1×1 branches, concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, 4, 1)
        self.b3 = nn.Sequential(_cbr(cin, 3, 1), _cbr(3, 6))
        self.b5 = nn.Sequential(_cbr(cin, 2, 1), _cbr(2, 3, 5))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, 3, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inc1 = _cbr(3, 8), InceptionBlock(8)
        self.inc2, self.fc = InceptionBlock(16), nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inc2(F.max_pool2d(self.inc1(self.stem(x)), 2))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1×1 squeeze, then 1×1 and 3×3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = _cbr(cin, squeeze, 1)
        self.e1, self.e3 = _cbr(squeeze, expand, 1), _cbr(squeeze, expand)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


class SqueezeNet(nn.Module):
    """Fire modules, ceil-mode max-pooling, a convolutional classifier (conv-ReLU-pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _cbr(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1, ceil_mode=True), Fire(8, 4, 6),
            Fire(12, 4, 6), nn.MaxPool2d(3, 2, 1, ceil_mode=True), Fire(12, 6, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, CLASSES, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class HRNet(nn.Module):
    """Two resolutions fused both ways: the low one upsampled (``F.interpolate``) and added to
    the high one, the high one strided down and added to the low one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.hi1 = _cbr(3, 8), _cbr(8, 8)
        self.to_lo, self.lo1 = _cbr(8, 12, 3, 2), _cbr(12, 12)
        self.lo_to_hi = nn.Sequential(*_conv_bn(12, 8, 1))
        self.hi_to_lo = nn.Sequential(*_conv_bn(8, 12, 3, 2))
        self.hi2, self.lo2 = _cbr(8, 8), _cbr(12, 12)
        self.lo_to_hi2 = nn.Sequential(*_conv_bn(12, 8, 1))
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        hi = self.hi1(self.stem(x))
        lo = self.lo1(self.to_lo(hi))
        hi, lo = (F.relu(hi + F.interpolate(self.lo_to_hi(lo), scale_factor=2)),
                  F.relu(lo + self.hi_to_lo(hi)))
        out = F.relu(self.hi2(hi) + F.interpolate(self.lo_to_hi2(self.lo2(lo)), scale_factor=2))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class Res2Block(nn.Module):
    """Res2Net's block: the channels split (``torch.split``) into groups, each group's conv
    taking the previous group's output added to its own input."""

    def __init__(self, channels: int, scale: int = 4, width: int = 3) -> None:
        super().__init__()
        self.conv1 = _cbr(channels, scale * width, 1)
        self.convs = nn.ModuleList(_cbr(width, width) for _ in range(scale - 1))
        self.conv3 = nn.Sequential(*_conv_bn(scale * width, channels, 1))
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(self.conv1(x), self.width, 1)
        outs, y = [], None
        for i, conv in enumerate(self.convs):
            y = conv(parts[i] if y is None else parts[i] + y)
            outs.append(y)
        return F.relu(x + self.conv3(torch.cat([*outs, parts[-1]], 1)))


class Res2Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 8), nn.MaxPool2d(2))
        self.blocks, self.fc = nn.Sequential(Res2Block(8), Res2Block(8)), nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class AttentionGate(nn.Module):
    """Attention U-Net's gate: the skip features times a sigmoid of the gating signal."""

    def __init__(self, gating: int, skip: int, inner: int) -> None:
        super().__init__()
        self.wg = nn.Sequential(*_conv_bn(gating, inner, 1))
        self.wx = nn.Sequential(*_conv_bn(skip, inner, 1))
        self.psi = nn.Sequential(*_conv_bn(inner, 1, 1), nn.Sigmoid())

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        return x * self.psi(F.relu(self.wg(g) + self.wx(x)))


class AttentionUNet(nn.Module):
    """A U-Net classifier whose skip connections pass attention gates (Oktay et al. 2018)."""

    def __init__(self) -> None:
        super().__init__()
        self.e1, self.e2, self.bottom = _double_conv(3, 4), _double_conv(4, 8), _double_conv(8, 16)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2), *_conv_bn(16, 8), nn.ReLU())
        self.att2, self.d2 = AttentionGate(8, 8, 4), _double_conv(16, 8)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2), *_conv_bn(8, 4), nn.ReLU())
        self.att1, self.d1 = AttentionGate(4, 4, 2), _double_conv(8, 4)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        g2 = self.up2(self.bottom(F.max_pool2d(e2, 2)))
        g1 = self.up1(self.d2(torch.cat([self.att2(g2, e2), g2], 1)))
        d1 = self.d1(torch.cat([self.att1(g1, e1), g1], 1))
        return self.fc(F.adaptive_avg_pool2d(d1, 1).flatten(1))


# The zoo ----------------------------------------------------------------------------------

def _small_resnet() -> nn.Module:
    return ResNet(widths=(4, 8), blocks=1)


def _channels_last() -> tuple[nn.Module, Tensor]:
    model, x = _build(12, SmallBNCNN, (3, 16, 16))
    return (model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last))


class LoRALinear(nn.Linear):
    """A LoRA layer as ``loralib`` writes it (``merge_weights=True``): ``train(False)`` merges
    ``B @ A`` into the frozen weight, ``train(True)`` takes it out again, and the forward
    adds the adapter's path only while it is not merged."""

    def __init__(self, in_features: int, out_features: int, rank: int = 2) -> None:
        super().__init__(in_features, out_features)
        self.lora_A = nn.Parameter(torch.randn(rank, in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(out_features, rank) * 0.1)
        self.weight.requires_grad = False
        self.merged = False

    def train(self, mode: bool = True) -> LoRALinear:
        super().train(mode)
        if mode == self.merged:  # (merge on eval, unmerge on train)
            sign = -1.0 if mode else 1.0
            self.weight.data += sign * (self.lora_B @ self.lora_A)
            self.merged = not mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out if self.merged else out + x @ self.lora_A.T @ self.lora_B.T


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "vgg16_bn": lambda: _build(0, VGG16BN, (3, 32, 32)),
    "resnet18": lambda: _build(1, ResNet, (3, 32, 32)),
    "bottleneck": lambda: _build(2, BottleneckNet, (3, 16, 16)),
    "mobilenet_v2": lambda: _build(3, MobileNetV2, (3, 32, 32)),
    "densenet": lambda: _build(4, DenseNet, (3, 16, 16)),
    "unet": lambda: _build(5, UNet, (3, 16, 16)),
    "audio1d": lambda: _build(6, Audio1d, (1, 256)),
    "normalized_input": lambda: _build(7, NormalizedInput, (3, 16, 16), image=True),
    "inplace_statements": lambda: _build(8, InplaceStatements, (3, 16, 16)),
    "tuple_output": lambda: _build(9, TupleOutput, (3, 16, 16)),
    "dict_output": lambda: _build(10, DictOutput, (3, 16, 16)),
    "float64": lambda: _build(11, _small_resnet, (3, 16, 16), dtype=torch.float64),
    "channels_last": _channels_last,
    "leaky_relu": lambda: _build(13, LeakyCNN, (3, 16, 16)),
    "convnext": lambda: _build(14, ConvNeXt, (3, 16, 16)),
    "efficientnet": lambda: _build(15, EfficientNet, (3, 16, 16)),
    "inception": lambda: _build(16, Inception, (3, 16, 16)),
    "squeezenet": lambda: _build(17, SqueezeNet, (3, 16, 16)),
    "hrnet": lambda: _build(18, HRNet, (3, 16, 16)),
    "res2net": lambda: _build(19, Res2Net, (3, 16, 16)),
    "attention_unet": lambda: _build(20, AttentionUNet, (3, 16, 16)),
}
"""Model name → factory returning ``(model in eval mode, input batch)``, the same each call."""


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model, backend="eager")``: an ``OptimizedModule`` around ``model``."""
    return torch.compile(model, backend="eager")
