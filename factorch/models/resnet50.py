"""ResNet-50 (He et al. 2016, table 1; the stride on the 3x3 conv of each bottleneck, as torchvision's "v1.5"):
the size of network users bring, for scale and latency work. No weights ship; calibrate on synthetic data.

At ``num_classes=1000, in_channels=3`` it has torchvision's 25,557,032 parameters and 4.09 G MACs at 224x224.
For small inputs (``small_input=True``, e.g. 1x28x28) the stem is a 3x3 conv without max pooling, so that the
last stage still sees a 4x4 map instead of 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn

from factorch.models._registry import register_model


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class ResNet(nn.Module):
    """Bottleneck ResNet: a stem, four stages of ``blocks`` bottlenecks (64, 128, 256, 512 wide), average pool, FC."""

    def __init__(self, blocks=(3, 4, 6, 3), num_classes: int = 1000, in_channels: int = 3,
                 small_input: bool = False) -> None:  # fmt: skip
        super().__init__()
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        prev, stages = 64, []
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            stage = []
            for j in range(n):
                stage.append(Bottleneck(prev, width, stride=2 if (i > 0 and j == 0) else 1))
                prev = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # each residual branch starts as the identity (Goyal et al. 2017)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet50(*, num_classes: int = 10, in_channels: int = 1, small_input: bool | None = None) -> nn.Module:
    """ResNet-50 (25.6 M parameters at 1000 classes). ``small_input``: a 3x3 stem without max pooling for
    28x28-32x32 images; ``None``: on for a 1-channel input (the Fashion-MNIST setting), off otherwise."""
    if small_input is None:
        small_input = in_channels == 1
    return ResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, small_input=small_input)
