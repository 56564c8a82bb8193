"""Spatial SVD: a ``k_h x 1`` conv to r channels, then a ``1 x k_w`` conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.decompose import spatial_svd, truncated_svd_of_product
from factorch.layers._spec import ConvSpec
from factorch.layers.base import FactorizedLayer, as_stages, copy_into, group_kernels, require_conv, svdvals
from factorch.rank import Spectrum


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

    def _products(self) -> list[tuple[Tensor, Tensor]]:
        """Per group, ``(left, right)`` with ``M[(c, i), (o, j)] = left @ right``, shapes ``(C_in * kh, r)`` and
        ``(r, C_out * kw)``."""
        g, out = self.spec.groups, []
        verticals = self.vertical.weight.detach().double().chunk(g)
        for v, h in zip(verticals, self.horizontal.weight.detach().double().chunk(g)):
            r, c, kh, _ = v.shape
            o, _, _, kw = h.shape
            left = v[..., 0].permute(1, 2, 0).reshape(c * kh, r)
            out.append((left, h[:, :, 0, :].permute(1, 0, 2).reshape(r, o * kw)))
        return out

    def own_spectra(self):
        """Per group, the singular values of the rank-r product, as those of its r x r middle (MUSCO)."""
        (r,) = self.ranks
        return (tuple(Spectrum(truncated_svd_of_product(a, b, r).s, (r, r)) for a, b in self._products()),)

    def _shrink_from(self, old: SpatialSVDConv2d) -> None:
        """Exact truncation of each group's rank-r product ``M[(c, i), (o, j)]`` (as :func:`spatial_svd` of the
        layer's kernel would give), without forming the kernel."""
        r = self.ranks[0]
        verticals, horizontals = [], []
        for (left, right), v, h in zip(
            old._products(), old.vertical.weight.chunk(self.spec.groups), old.horizontal.weight.chunk(self.spec.groups)
        ):
            c, kh, o, kw = v.shape[1], v.shape[2], h.shape[0], h.shape[3]
            u, s, vh = truncated_svd_of_product(left, right, r)
            root = s.sqrt()
            verticals.append((u * root).T.reshape(r, c, kh, 1))
            horizontals.append((root[:, None] * vh).reshape(r, o, 1, kw).transpose(0, 1))
        copy_into(self.vertical.weight, torch.cat(verticals))
        copy_into(self.horizontal.weight, torch.cat(horizontals))
        if old.horizontal.bias is not None:
            self.horizontal.bias.copy_(old.horizontal.bias)

    def _chain_weight(self) -> Tensor:
        g = self.spec.groups
        out = []
        for v, h in zip(self.vertical.weight.double().chunk(g), self.horizontal.weight.double().chunk(g)):
            # W[o, c, i, j] = sum_r h[o, r, 0, j] v[r, c, i, 0]
            out.append(torch.einsum("orj,rci->ocij", h[:, :, 0, :], v[:, :, :, 0]))
        return torch.cat(out)
