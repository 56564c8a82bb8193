"""Spatial SVD: a ``k_h x 1`` conv to r channels, then a ``1 x k_w`` conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.decompose import spatial_svd
from factorch.layers._spec import ConvSpec
from factorch.layers.base import FactorizedLayer, as_stages, copy_into, group_kernels, require_conv, svdvals


class SpatialSVDConv2d(FactorizedLayer):
    """``(k_h x 1) conv (C_in -> r per group) -> (1 x k_w) conv (r -> C_out)``.

    From the SVD of each group's kernel reshaped to ``(C_in/g * k_h) x (C_out/g * k_w)``. Stride,
    dilation and padding are split by axis (each padding mode pads the two axes independently, so the
    chain pads exactly as the dense conv); groups are decomposed group by group.

    References: Jaderberg, Vedaldi & Zisserman 2014 (scheme 2); Tai et al. 2016.
    """

    method = "spatial-svd"

    @classmethod
    def check(cls, spec, options) -> None:
        require_conv("spatial SVD", spec, dims=(2,))

    @classmethod
    def max_ranks(cls, spec: ConvSpec, options) -> tuple[int, ...]:
        kh, kw = spec.kernel_size
        return (min(spec.in_per_group * kh, spec.out_per_group * kw),)

    @classmethod
    def spectra(cls, layer, spec: ConvSpec, options):
        mats = []
        for w in group_kernels(layer.weight, spec.groups):
            o, c, kh, kw = w.shape
            mats.append(svdvals(w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)))
        return (tuple(mats),)

    @classmethod
    def build(cls, spec: ConvSpec, ranks, device=None, **options) -> SpatialSVDConv2d:
        (r,) = ranks
        g = spec.groups
        return cls(
            as_stages(
                vertical=spec.along_axis(0, spec.in_channels, g * r, g, False, device),
                horizontal=spec.along_axis(1, g * r, spec.out_channels, g, spec.bias, device),
            ),
            spec,
            ranks,
        )

    def _set_factors(self, layer: nn.Module) -> None:
        parts = [spatial_svd(w, self.ranks[0]) for w in group_kernels(layer.weight, self.spec.groups)]
        copy_into(self.vertical.weight, torch.cat([p.vertical for p in parts]))
        copy_into(self.horizontal.weight, torch.cat([p.horizontal for p in parts]))
        if layer.bias is not None:
            self.horizontal.bias.copy_(layer.bias)

    def reconstruct_weight(self) -> Tensor:
        g = self.spec.groups
        out = []
        for v, h in zip(self.vertical.weight.double().chunk(g), self.horizontal.weight.double().chunk(g)):
            # W[o, c, i, j] = sum_r h[o, r, 0, j] v[r, c, i, 0]
            out.append(torch.einsum("orj,rci->ocij", h[:, :, 0, :], v[:, :, :, 0]))
        return torch.cat(out)
