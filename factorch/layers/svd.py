"""Truncated-SVD layers: ``LowRankLinear`` (Linear -> rank r -> Linear) and ``SVDConv`` (the "weight SVD":
a k x k conv to r channels, then a 1x1 conv; plain SVD for 1x1 convs)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.decompose import truncated_svd, truncated_svd_of_product
from factorch.layers._spec import ConvSpec, LinearSpec
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


def _split(u: Tensor, s: Tensor, vh: Tensor) -> tuple[Tensor, Tensor]:
    root = s.sqrt()
    return u * root, root[:, None] * vh


class LowRankLinear(FactorizedLayer):
    """``Linear(in, r, bias=False) -> Linear(r, out)`` from the truncated SVD of the weight.

    References: Denton et al. 2014; Xue, Li & Gong 2013.
    """

    method = "svd"

    @classmethod
    def check(cls, spec, options) -> None:
        if not isinstance(spec, LinearSpec):
            raise NotFactorizable("LowRankLinear factorizes nn.Linear layers")

    @classmethod
    def max_ranks(cls, spec: LinearSpec, options) -> tuple[int, ...]:
        return (min(spec.in_features, spec.out_features),)

    @classmethod
    def spectra(cls, layer, spec, options):
        return ((svdvals(layer.weight),),)

    @classmethod
    def build(cls, spec: LinearSpec, ranks, device=None, **options) -> LowRankLinear:
        (r,) = ranks
        kw = dict(device=device, dtype=spec.torch_dtype)
        return cls(
            as_stages(
                first=nn.Linear(spec.in_features, r, bias=False, **kw),
                second=nn.Linear(r, spec.out_features, bias=spec.bias, **kw),
            ),
            spec,
            ranks,
        )

    def _set_factors(self, layer: nn.Linear) -> None:
        u, s, vh = truncated_svd(layer.weight.detach(), self.ranks[0])
        left, right = _split(u, s, vh)
        copy_into(self.first.weight, right)
        copy_into(self.second.weight, left)
        if layer.bias is not None:
            self.second.bias.copy_(layer.bias)

    def _shrink_from(self, old: LowRankLinear) -> None:
        """Exact truncation of the rank-r product (QR of both factors, SVD of the r x r middle)."""
        t = truncated_svd_of_product(old.second.weight.detach(), old.first.weight.detach(), self.ranks[0])
        left, right = _split(*t)
        copy_into(self.first.weight, right)
        copy_into(self.second.weight, left)
        if old.second.bias is not None:
            self.second.bias.copy_(old.second.bias)

    def own_spectra(self):
        """The singular values of the rank-r product, as those of its r x r middle (MUSCO)."""
        (r,) = self.ranks
        s = truncated_svd_of_product(self.second.weight.detach(), self.first.weight.detach(), r).s
        return ((Spectrum(s, (r, r)),),)

    def _chain_weight(self) -> Tensor:
        return self.second.weight.double() @ self.first.weight.double()


class SVDConv(FactorizedLayer):
    """Weight SVD of a convolution: ``k x k conv (C_in -> r per group) -> 1x1 conv (r -> C_out)``.

    The kernel of each group, reshaped to ``C_out/g x (C_in/g * k_h * k_w)``, is split by truncated SVD.
    The first conv keeps every spatial attribute of the dense one (stride, padding and its mode,
    dilation); both convs keep its groups. For a 1x1 conv this is plain SVD.

    References: Zhang et al. 2016 ("Accelerating very deep convolutional networks"), Denton et al. 2014.
    """

    method = "svd"

    @classmethod
    def check(cls, spec, options) -> None:
        require_conv("SVD", spec)

    @classmethod
    def max_ranks(cls, spec: ConvSpec, options) -> tuple[int, ...]:
        return (min(spec.out_per_group, spec.in_per_group * spec.kernel_numel),)

    @classmethod
    def spectra(cls, layer, spec: ConvSpec, options):
        return (tuple(svdvals(w.reshape(w.shape[0], -1)) for w in group_kernels(layer.weight, spec.groups)),)

    @classmethod
    def build(cls, spec: ConvSpec, ranks, device=None, **options) -> SVDConv:
        (r,) = ranks
        g = spec.groups
        return cls(
            as_stages(
                first=spec.full(spec.in_channels, g * r, g, False, device),
                second=spec.pointwise(g * r, spec.out_channels, g, spec.bias, device),
            ),
            spec,
            ranks,
        )

    def _set_factors(self, layer: nn.Module) -> None:
        spec, (r,) = self.spec, self.ranks
        firsts, seconds = [], []
        for w in group_kernels(layer.weight, spec.groups):
            u, s, vh = truncated_svd(w.reshape(w.shape[0], -1), r)
            left, right = _split(u, s, vh)
            firsts.append(right.reshape(r, *w.shape[1:]))
            seconds.append(left.reshape(w.shape[0], r, *([1] * spec.dim)))
        copy_into(self.first.weight, torch.cat(firsts))
        copy_into(self.second.weight, torch.cat(seconds))
        if layer.bias is not None:
            self.second.bias.copy_(layer.bias)

    def _shrink_from(self, old: SVDConv) -> None:
        """Exact truncation of each group's rank-r product (QR of both factors, SVD of the r x r middle)."""
        spec, (r,), (r_old,) = self.spec, self.ranks, old.ranks
        firsts, seconds = [], []
        for a, b in zip(old.first.weight.double().chunk(spec.groups), old.second.weight.double().chunk(spec.groups)):
            t = truncated_svd_of_product(b.reshape(b.shape[0], r_old), a.reshape(r_old, -1), r)
            left, right = _split(*t)
            firsts.append(right.reshape(r, *a.shape[1:]))
            seconds.append(left.reshape(b.shape[0], r, *([1] * spec.dim)))
        copy_into(self.first.weight, torch.cat(firsts))
        copy_into(self.second.weight, torch.cat(seconds))
        if old.second.bias is not None:
            self.second.bias.copy_(old.second.bias)

    def own_spectra(self):
        """Per group, the singular values of the rank-r product, as those of its r x r middle (MUSCO)."""
        spec, (r,) = self.spec, self.ranks
        pairs = zip(self.first.weight.detach().chunk(spec.groups), self.second.weight.detach().chunk(spec.groups))
        return (
            tuple(
                Spectrum(truncated_svd_of_product(b.reshape(b.shape[0], r), a.reshape(r, -1), r).s, (r, r))
                for a, b in pairs
            ),
        )

    def _chain_weight(self) -> Tensor:
        spec, (r,) = self.spec, self.ranks
        out = []
        for a, b in zip(self.first.weight.double().chunk(spec.groups), self.second.weight.double().chunk(spec.groups)):
            out.append((b.reshape(b.shape[0], r) @ a.reshape(r, -1)).reshape(b.shape[0], *a.shape[1:]))
        return torch.cat(out)
