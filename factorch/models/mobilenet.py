"""CIFAR-style MobileNetV2 (Sandler et al. 2018): inverted residual blocks, stride-1 stem for small images."""

from __future__ import annotations

from torch import Tensor, nn

from factorch.models._registry import register_model


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, 1))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion, channels, repeats, stride) as in the paper, with the CIFAR-style strides
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> None:
        super().__init__()
        stem = _round(32 * width)
        last = _round(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_relu(in_channels, stem, 3, 1)]
        prev = stem
        for t, c, n, s in SETTINGS:
            out = _round(c * width)
            for i in range(n):
                layers.append(InvertedResidual(prev, out, s if i == 0 else 1, t))
                prev = out
        layers.append(conv_bn_relu(prev, last, 1))
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
