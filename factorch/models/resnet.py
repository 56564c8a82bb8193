"""CIFAR-style ResNet-20 (He et al. 2016, section 4.2): 3 stages of basic blocks, 16/32/64 channels.

The shortcut across a change of shape is "option A" of the paper: a strided identity padded with zero
channels, so the network has the paper's 0.27 M parameters and every convolution is a 3x3 conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from factorch.models._registry import register_model
from factorch.nn import TRL, ShiftAttentionConv2d


class PadShortcut(nn.Module):
    """Identity shortcut that subsamples by ``stride`` and zero-pads the channels to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        prev = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(prev, w, stride=2 if (i > 0 and j == 0) else 1))
                prev = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model
def resnet20(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ResNet-20 for small images: 19 3x3 convs + 1 Linear, 0.27 M parameters."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels)


@register_model
def resnet32(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ResNet-32 (0.46 M parameters); no weights ship: for studies of how the search scales with depth."""
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels)


@register_model
def resnet56(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ResNet-56 (0.85 M parameters); no weights ship."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


@register_model
def resnet110(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ResNet-110 (1.7 M parameters); no weights ship."""
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels)


def _with_sal(model: CifarResNet, keep: int, ramp: float = 0.75, position_groups: int | None = None) -> CifarResNet:
    """Every 3x3 conv of the residual blocks as a Shift Attention Layer started from its kernel (the stem conv
    stays dense); ``model`` is modified and returned."""
    for block in (b for stage in (model.layer1, model.layer2, model.layer3) for b in stage):
        for name in ("conv1", "conv2"):
            sal = ShiftAttentionConv2d.from_conv(
                getattr(block, name), keep=keep, ramp=ramp, position_groups=position_groups
            )
            setattr(block, name, sal)
    return model


@register_model
def sal_resnet20(*, num_classes: int = 10, in_channels: int = 1, keep: int = 1) -> nn.Module:
    """ResNet-20 whose block convs are Shift Attention Layers keeping ``keep`` weights per kernel slice (the
    shipped weights: fine-tuned from ``resnet20`` through ``SALConfig``, binarised)."""
    return _with_sal(CifarResNet(20, num_classes=num_classes, in_channels=in_channels), keep)


@register_model
def shift_resnet20(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """``sal_resnet20`` whose layers share their kept position per input channel across all outputs
    (``position_groups=1``): each block conv runs as a learned shift of every input channel and a 1x1 conv,
    1/9 of the 3x3 conv's MACs (the shipped weights: fine-tuned from ``resnet20`` through
    ``SALConfig(position_groups=1)``, binarised)."""
    return _with_sal(CifarResNet(20, num_classes=num_classes, in_channels=in_channels), 1, position_groups=1)


@register_model
def sal2_resnet20(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """``sal_resnet20`` keeping two weights per kernel slice (SAL2)."""
    return sal_resnet20(num_classes=num_classes, in_channels=in_channels, keep=2)


class TRLResNet(CifarResNet):
    """ResNet-20 whose global-average-pool + Linear head is a tensor regression layer on the last 64x7x7 map
    (other input sizes are average-pooled to 7x7 first; at 28x28 that pooling is the identity)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, rank=(16, 4, 4, 10)) -> None:
        super().__init__(20, num_classes=num_classes, in_channels=in_channels)
        del self.fc
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.trl = TRL((64, 7, 7), num_classes, (*rank[:3], min(rank[3], num_classes)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.trl(self.pool(self.layer3(self.layer2(self.layer1(x)))))


@register_model
def resnet20_trl(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """ResNet-20 with a tensor regression head (core rank 16 x 4 x 4 x 10) instead of pooling + Linear."""
    return TRLResNet(num_classes=num_classes, in_channels=in_channels)
