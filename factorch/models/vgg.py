"""A VGG-style network with BatchNorm for 28x28 images (Simonyan & Zisserman 2015).

Eight 3x3 conv layers of 64 to 256 channels and a two-layer classifier: about 2.4 M parameters and
83 M MACs on a 1x28x28 input. Over-parameterised like the networks users bring, yet trainable on 2 cores.
"""

from __future__ import annotations

from torch import Tensor, nn

from factorch.models._registry import register_model

# channels per conv; "M" = 2x2 max-pool
VGG_LAYOUT = (64, "M", 64, 128, "M", 128, 256, 256, "M", 256, 256)


class VGG(nn.Module):
    def __init__(
        self, layout=VGG_LAYOUT, num_classes: int = 10, in_channels: int = 1, hidden: int = 512, dropout: float = 0.3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(prev, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                prev = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(prev, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def vgg(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """VGG-style network: 8 conv+BN+ReLU layers (64-256 channels), 3 max-pools, 512-unit classifier."""
    return VGG(num_classes=num_classes, in_channels=in_channels)
