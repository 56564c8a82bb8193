"""Factorized building blocks of compact convolutional networks.

Each block is the factorization a classic architecture builds in, written with plain torch layers so that
``factorch.profile`` and ``factorch.score`` count it without special cases:

* :class:`Fire` (SqueezeNet, Iandola et al. 2016): a 1x1 "squeeze" conv, then 1x1 and 3x3 "expand" convs
  concatenated.
* :class:`DepthwiseSeparableConv` (Xception, Chollet 2017; MobileNet v1, Howard et al. 2017): a depthwise
  ``k x k`` conv (one filter per channel) then a pointwise 1x1 conv.
* :class:`InvertedResidual` (MobileNet v2, Sandler et al. 2018): 1x1 expansion, depthwise 3x3, linear 1x1
  projection, identity shortcut when shapes allow.
* :class:`ResNeXtBlock` (Xie et al. 2017): a bottleneck whose 3x3 conv is grouped (``cardinality`` paths).
* :class:`AsymmetricConv` (Inception v3, Szegedy et al. 2016; flattened convolutions, Jin et al. 2014): an
  ``n x 1`` conv then a ``1 x n`` conv.

Every conv is followed by a BatchNorm and an activation where the paper puts one (``norm=False`` leaves the
BatchNorms out, e.g. to compare with an unnormalised reference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Activation = Callable[[], nn.Module]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_norm_act(
    cin: int,
    cout: int,
    kernel_size: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    norm: bool = True,
    activation: Activation | None = nn.ReLU,
) -> nn.Sequential:
    """``Conv2d`` (no bias when a BatchNorm follows) -> ``BatchNorm2d`` -> activation; the ones asked for."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def _check_positive(block: str, **values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{block}: {name} must be a positive int, got {v!r}")


class Fire(nn.Module):
    """SqueezeNet's Fire module: ``squeeze`` 1x1 filters, then ``expand1x1`` 1x1 and ``expand3x3`` 3x3 filters
    on the squeezed map, concatenated (``expand1x1 + expand3x3`` output channels, same spatial size).

    Reference: Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters".
    """

    def __init__(
        self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int, *, norm: bool = True,
        activation: Activation = nn.ReLU,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_positive("Fire", in_channels=in_channels, squeeze=squeeze, expand1x1=expand1x1, expand3x3=expand3x3)
        self.squeeze = conv_norm_act(in_channels, squeeze, 1, norm=norm, activation=activation)
        self.expand1x1 = conv_norm_act(squeeze, expand1x1, 1, norm=norm, activation=activation)
        self.expand3x3 = conv_norm_act(squeeze, expand3x3, 3, padding=1, norm=norm, activation=activation)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)


class DepthwiseSeparableConv(nn.Module):
    """A depthwise ``k x k`` conv (``groups = in_channels``, carrying the stride) then a pointwise 1x1 conv,
    each followed by BatchNorm and the activation (MobileNet v1). ``k^2 + out`` MACs per input channel and
    position instead of ``k^2 * out``.

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: the depthwise kernel.
        stride: of the depthwise conv.
        padding: of the depthwise conv; ``None``: ``kernel_size // 2`` (same size at stride 1).
        depth_multiplier: depthwise filters per input channel.
        norm: BatchNorms after both convs.
        activation: after both convs (``None``: none, as in Xception's separable convs).
        activation_between: also after the depthwise conv (MobileNet: yes; Xception: no).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
        *, depth_multiplier: int = 1, norm: bool = True, activation: Activation | None = nn.ReLU,
        activation_between: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_positive("DepthwiseSeparableConv", in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, stride=stride, depth_multiplier=depth_multiplier)  # fmt: skip
        mid = in_channels * depth_multiplier
        pad = kernel_size // 2 if padding is None else padding
        self.depthwise = conv_norm_act(in_channels, mid, kernel_size, stride, pad, groups=in_channels, norm=norm,
                                       activation=activation if activation_between else None)  # fmt: skip
        self.pointwise = conv_norm_act(mid, out_channels, 1, norm=norm, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNet v2's block: 1x1 expansion to ``in_channels * expand_ratio`` (skipped at ratio 1), depthwise
    3x3 (carrying the stride), linear 1x1 projection; ``x +`` the result when the stride is 1 and the channels
    match. ReLU6 activations, no activation after the projection.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: int = 6, *, norm: bool = True,
        activation: Activation = nn.ReLU6,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_positive("InvertedResidual", in_channels=in_channels, out_channels=out_channels, stride=stride,
                        expand_ratio=expand_ratio)  # fmt: skip
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_norm_act(in_channels, hidden, 1, norm=norm, activation=activation))
        layers.append(conv_norm_act(hidden, hidden, 3, stride, 1, groups=hidden, norm=norm, activation=activation))
        layers.append(conv_norm_act(hidden, out_channels, 1, norm=norm, activation=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class ResNeXtBlock(nn.Module):
    """ResNeXt's bottleneck: 1x1 conv to ``cardinality * bottleneck_width`` channels, grouped 3x3 conv
    (``cardinality`` groups, carrying the stride), 1x1 conv to ``out_channels``; added to the input (through
    a strided 1x1 conv + BatchNorm when the shape changes), then ReLU.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, cardinality: int = 8,
        bottleneck_width: int = 4, norm: bool = True, activation: Activation = nn.ReLU,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_positive("ResNeXtBlock", in_channels=in_channels, out_channels=out_channels, stride=stride,
                        cardinality=cardinality, bottleneck_width=bottleneck_width)  # fmt: skip
        width = cardinality * bottleneck_width
        self.reduce = conv_norm_act(in_channels, width, 1, norm=norm, activation=activation)
        self.grouped = conv_norm_act(width, width, 3, stride, 1, groups=cardinality, norm=norm, activation=activation)
        self.expand = conv_norm_act(width, out_channels, 1, norm=norm, activation=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_norm_act(in_channels, out_channels, 1, stride, norm=norm, activation=None)
        self.act = activation()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class AsymmetricConv(nn.Module):
    """An ``n x 1`` conv to ``mid_channels`` then a ``1 x n`` conv to ``out_channels`` (Inception v3's
    factorization of an ``n x n`` conv; with ``norm=False, activation=None`` and the first conv's bias at zero,
    the pair is exactly one ``n x n`` conv whose kernel slices have rank ``mid_channels``).

    Args:
        kernel_size: ``n``.
        stride, padding: of the ``n x n`` conv replaced; the vertical parts go to the first conv, the
            horizontal parts to the second. ``padding=None``: ``n // 2``.
        mid_channels: channels between the two convs (``None``: ``out_channels``).
        norm, activation: after each conv (``activation_between`` places one between the two as well).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None, *, mid_channels: int | None = None, norm: bool = True,
        activation: Activation | None = nn.ReLU, activation_between: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        _check_positive("AsymmetricConv", in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, mid_channels=mid)  # fmt: skip
        sh, sw = _pair(stride)
        ph, pw = _pair(kernel_size // 2 if padding is None else padding)
        self.vertical = conv_norm_act(in_channels, mid, (kernel_size, 1), (sh, 1), (ph, 0), norm=norm,
                                      activation=activation if activation_between else None)  # fmt: skip
        self.horizontal = conv_norm_act(mid, out_channels, (1, kernel_size), (1, sw), (0, pw), norm=norm,
                                        activation=activation)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.horizontal(self.vertical(x))
