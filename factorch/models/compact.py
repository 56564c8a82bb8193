"""Compact architectures for 1x28x28 inputs, built from ``factorch.nn``'s factorized blocks: SqueezeNet (Fire),
MobileNet v1 (depthwise-separable convs), ResNeXt (grouped bottlenecks), a small Xception (separable convs
with residuals) and a small Inception (1x1 reductions and asymmetric n x 1 / 1 x n convs). Global average
pooling replaces large fully-connected heads in all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.models._registry import register_model
from factorch.nn import AsymmetricConv, DepthwiseSeparableConv, Fire, ResNeXtBlock
from factorch.nn.blocks import conv_norm_act


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


class SqueezeNet(nn.Module):
    """SqueezeNet (v1.1 ordering) for small images: a 3x3 stem, Fire modules between two max-pools, a 1x1
    conv classifier and global average pooling, BatchNorms after every conv."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_norm_act(in_channels, 64, 3, padding=1),
            nn.MaxPool2d(2),  # 14 x 14
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            Fire(128, 32, 128, 128),
            nn.MaxPool2d(2),  # 7 x 7
            Fire(256, 32, 128, 128),
            Fire(256, 48, 192, 192),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(384, num_classes, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.classifier(self.features(x))).flatten(1)


class MobileNetV1(nn.Module):
    """MobileNet v1 for small images: a 3x3 stem, then depthwise-separable convs (width multiplier ``width``),
    two downsamplings, global average pooling and a Linear classifier."""

    # (output channels, stride) of each depthwise-separable conv, at width 1
    SETTINGS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 1), (512, 1), (512, 1), (1024, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> None:
        super().__init__()
        stem = max(8, int(32 * width))
        layers: list[nn.Module] = [conv_norm_act(in_channels, stem, 3, padding=1)]
        prev = stem
        for c, s in self.SETTINGS:
            out = max(8, int(c * width))
            layers.append(DepthwiseSeparableConv(prev, out, 3, s))
            prev = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class ResNeXt(nn.Module):
    """A small ResNeXt: a 3x3 stem, three stages of grouped bottlenecks (cardinality 8), global pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, cardinality: int = 8, blocks: int = 2) -> None:
        super().__init__()
        self.stem = conv_norm_act(in_channels, 32, 3, padding=1)
        stages, prev = [], 32
        for i, (out, width) in enumerate(((64, 4), (128, 8), (256, 16))):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(ResNeXtBlock(prev, out, stride, cardinality=cardinality, bottleneck_width=width))
                prev = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


class XceptionBlock(nn.Module):
    """Two separable convs (ReLU before each, no activation between depthwise and pointwise, as in Xception),
    a 3x3 max-pool of stride ``stride``, and a 1x1 (strided) conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            DepthwiseSeparableConv(cin, cout, activation=None, activation_between=False),
            nn.ReLU(),
            DepthwiseSeparableConv(cout, cout, activation=None, activation_between=False),
            nn.MaxPool2d(3, stride, 1) if stride > 1 else nn.Identity(),
        )
        self.shortcut = conv_norm_act(cin, cout, 1, stride, activation=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class XceptionMini(nn.Module):
    """A small Xception: a 3x3 stem, three separable-conv residual blocks (two downsampling), a separable conv,
    global average pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = conv_norm_act(in_channels, 32, 3, padding=1)
        self.blocks = nn.Sequential(XceptionBlock(32, 64, 2), XceptionBlock(64, 128, 2), XceptionBlock(128, 128, 1))
        self.exit = nn.Sequential(nn.ReLU(), DepthwiseSeparableConv(128, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.exit(self.blocks(self.stem(x)))).flatten(1))


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1; 1x1 reduction then asymmetric 3x1 / 1x3; 1x1 reduction then two
    asymmetric 3x1 / 1x3 pairs (a factorized 5x5); 3x3 average pool then 1x1 (Inception v3's figure 6)."""

    def __init__(self, cin: int, b1: int, r3: int, b3: int, r5: int, b5: int, pool: int) -> None:
        super().__init__()
        self.branch1 = conv_norm_act(cin, b1, 1)
        self.branch3 = nn.Sequential(conv_norm_act(cin, r3, 1), AsymmetricConv(r3, b3, 3))
        self.branch5 = nn.Sequential(conv_norm_act(cin, r5, 1), AsymmetricConv(r5, b5, 3), AsymmetricConv(b5, b5, 3))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_norm_act(cin, pool, 1))
        self.out_channels = b1 + b3 + b5 + pool

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class InceptionMini(nn.Module):
    """A small Inception: a 3x3 stem, Inception modules with 1x1 reductions and asymmetric convs between two
    max-pools, global average pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        a = InceptionModule(32, 16, 16, 32, 8, 8, 8)  # 64
        b = InceptionModule(64, 32, 32, 48, 16, 24, 24)  # 128
        c = InceptionModule(128, 48, 48, 96, 24, 32, 32)  # 208
        self.features = nn.Sequential(
            conv_norm_act(in_channels, 32, 3, padding=1), nn.MaxPool2d(2), a, b, nn.MaxPool2d(2), c
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c.out_channels, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model
def squeezenet(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """SqueezeNet for small images: Fire modules, a 1x1 conv classifier, no fully-connected layer."""
    return SqueezeNet(num_classes=num_classes, in_channels=in_channels)


@register_model
def mobilenet_v1(*, num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> nn.Module:
    """MobileNet v1 for small images (depthwise-separable convs), width multiplier 0.5 by default."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, width=width)


@register_model
def resnext(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small ResNeXt (cardinality 8, two grouped bottlenecks per stage)."""
    return ResNeXt(num_classes=num_classes, in_channels=in_channels)


@register_model
def xception_mini(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small Xception: depthwise-separable convs in residual blocks."""
    return XceptionMini(num_classes=num_classes, in_channels=in_channels)


@register_model
def inception_mini(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small Inception: 1x1 reductions and asymmetric 3x1 / 1x3 convs."""
    return InceptionMini(num_classes=num_classes, in_channels=in_channels)
