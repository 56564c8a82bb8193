"""Tucker-2 convolutions: ``1x1 (C_in -> R_in) -> k x k core (R_in -> R_out) -> 1x1 (R_out -> C_out)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.decompose import tucker2, tucker2_of_tucker2
from factorch.decompose._common import unfold
from factorch.layers._spec import ConvSpec
from factorch.layers.base import (
    FactorizedLayer,
    NotFactorizable,
    as_stages,
    copy_into,
    group_kernels,
    require_conv,
    svdvals,
)
from factorch.rank import Spectrum


class Tucker2Conv(FactorizedLayer):
    """Tucker-2 decomposition of a conv kernel along its two channel modes (HOSVD + HOOI).

    The first 1x1 conv has no bias, so it commutes with every padding mode; the core conv keeps every
    spatial attribute of the dense conv; groups are decomposed group by group (block-diagonal factors as
    grouped 1x1 convs). Ranks are ``(R_out, R_in)`` per group.

    References: Kim et al. 2016, "Compression of deep convolutional neural networks for fast and low power
    mobile applications".
    """

    method = "tucker2"
    rank_names = ("rank_out", "rank_in")

    @classmethod
    def check(cls, spec, options) -> None:
        spec = require_conv("Tucker-2", spec)
        if spec.in_per_group == 1 and spec.out_per_group == 1:
            raise NotFactorizable("a depthwise conv has one channel per group: Tucker-2 cannot shrink it")

    @classmethod
    def max_ranks(cls, spec: ConvSpec, options) -> tuple[int, ...]:
        return (spec.out_per_group, spec.in_per_group)

    @classmethod
    def spectra(cls, layer, spec: ConvSpec, options):
        kernels = group_kernels(layer.weight, spec.groups)
        return tuple(tuple(svdvals(unfold(w, mode)) for w in kernels) for mode in (0, 1))

    @classmethod
    def build(cls, spec: ConvSpec, ranks, device=None, **options) -> Tucker2Conv:
        r_out, r_in = ranks
        g = spec.groups
        return cls(
            as_stages(
                first=spec.pointwise(spec.in_channels, g * r_in, g, False, device),
                core=spec.full(g * r_in, g * r_out, g, False, device),
                last=spec.pointwise(g * r_out, spec.out_channels, g, spec.bias, device),
            ),
            spec,
            ranks,
            **options,
        )

    def _load(self, parts: list, bias: Tensor | None) -> None:
        """Copy one Tucker-2 result per group into the three convs (and the bias into the last)."""
        ones = [1] * self.spec.dim
        copy_into(self.first.weight, torch.cat([t.in_factor.T.reshape(*t.in_factor.shape[::-1], *ones) for t in parts]))
        copy_into(self.core.weight, torch.cat([t.core for t in parts]))
        copy_into(self.last.weight, torch.cat([t.out_factor.reshape(*t.out_factor.shape, *ones) for t in parts]))
        if bias is not None:
            self.last.bias.copy_(bias)

    def _set_factors(self, layer: nn.Module) -> None:
        n_iter_max = int(self.options.get("n_iter_max", 100))
        parts = [tucker2(w, self.ranks, n_iter_max=n_iter_max) for w in group_kernels(layer.weight, self.spec.groups)]
        self._load(parts, layer.bias)

    def _shrink_from(self, old: Tucker2Conv) -> None:
        """MUSCO: Tucker-2 of each group's core (after orthonormalising the 1x1 factors), the new factors
        merged into the outer 1x1 convs; equal to Tucker-2 of the dense kernel, without forming it."""
        g = self.spec.groups
        parts = []
        for a, c, b in zip(
            old.first.weight.double().chunk(g), old.core.weight.double().chunk(g), old.last.weight.double().chunk(g)
        ):
            t = tucker2_of_tucker2(
                c,
                b.reshape(b.shape[0], b.shape[1]),
                a.reshape(a.shape[0], a.shape[1]).T,
                self.ranks,
                n_iter_max=int(self.options.get("n_iter_max", 100)),
            )
            parts.append(t)
        self._load(parts, old.last.bias)

    def own_spectra(self):
        """Per mode and group, the singular values of the core's unfoldings once the 1x1 factors are
        orthonormalised (QR): what MUSCO's VBMF reads to shrink a Tucker-2 layer again."""
        g = self.spec.groups
        modes: tuple[list, list] = ([], [])
        for a, c, b in zip(
            self.first.weight.detach().double().chunk(g),
            self.core.weight.detach().double().chunk(g),
            self.last.weight.detach().double().chunk(g),
        ):
            r_out = torch.linalg.qr(b.reshape(b.shape[0], b.shape[1]))[1]
            r_in = torch.linalg.qr(a.reshape(a.shape[0], a.shape[1]).T)[1]
            small = torch.einsum("ap,pq...,bq->ab...", r_out, c, r_in)
            for mode in (0, 1):
                matrix = unfold(small, mode)
                modes[mode].append(Spectrum(torch.linalg.svdvals(matrix), (matrix.shape[0], matrix.shape[1])))
        return (tuple(modes[0]), tuple(modes[1]))

    def _chain_weight(self) -> Tensor:
        g = self.spec.groups
        out = []
        for a, c, b in zip(
            self.first.weight.double().chunk(g), self.core.weight.double().chunk(g), self.last.weight.double().chunk(g)
        ):
            u_in = a.reshape(a.shape[0], a.shape[1])  # (R_in, C_in/g)
            u_out = b.reshape(b.shape[0], b.shape[1])  # (C_out/g, R_out)
            out.append(torch.einsum("or,rs...,sc->oc...", u_out, c, u_in))
        return torch.cat(out)
