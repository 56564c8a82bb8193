"""CIFAR-style MobileNetV2 (Sandler et al. 2018): inverted residual blocks, stride-1 stem for small images."""

from __future__ import annotations

from torch import Tensor, nn

from factorch.models._registry import register_model
from factorch.nn import InvertedResidual
from factorch.nn.blocks import conv_norm_act


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


# (expansion, channels, repeats, stride) as in the paper, the strides set for 28x28 inputs: 28 -> 14 at the
# 24-channel stage, -> 7 at 32, -> 4 at 64 (the CIFAR-style strides keep 28x28 through the 24-channel stage:
# 23 M MACs and ~6x the training time on a CPU)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> None:
        super().__init__()
        stem = _round(32 * width)
        last = _round(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_norm_act(in_channels, stem, 3, 1, 1, activation=nn.ReLU6)]
        prev = stem
        for t, c, n, s in SETTINGS:
            out = _round(c * width)
            for i in range(n):
                layers.append(InvertedResidual(prev, out, s if i == 0 else 1, t))
                prev = out
        layers.append(conv_norm_act(prev, last, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def mobilenet_v2(*, num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> nn.Module:
    """MobileNetV2 for small images (stride-1 stem, 3 downsamplings), width multiplier 0.5 by default."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width=width)
