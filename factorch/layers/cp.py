"""CP convolutions (Lebedev et al. 2015): ``1x1 -> depthwise k_h x 1 -> depthwise 1 x k_w -> 1x1`` ("4"), or the
MobileNet-like ``1x1 -> depthwise k x k -> 1x1`` ("3")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorch.decompose import cp, cp_balance, cp_max_rank
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

FORMS = ("4", "3")


class CPConv(FactorizedLayer):
    """CP decomposition of a conv kernel, computed with factorch's stabilised CP (:func:`factorch.decompose.cp`).

    ``form="4"`` (2-D convs): the four factors of ``(C_out, C_in, k_h, k_w)`` become a 1x1 conv, a depthwise
    ``k_h x 1``, a depthwise ``1 x k_w`` (stride, dilation and padding split by axis) and a 1x1 conv.
    ``form="3"`` (and every 1-D conv): the three factors of ``(C_out, C_in, k_h*k_w)`` become a 1x1 conv, a
    depthwise ``k x k`` conv with the dense conv's spatial attributes, and a 1x1 conv. Groups are
    decomposed group by group.

    References: Lebedev et al. 2015, "Speeding-up convolutional neural networks using fine-tuned
    CP-decomposition"; Phan et al. 2020 (stabilised CP, "EPC").
    """

    method = "cp"
    exact_at_full_rank = False  # an ALS fit: full CP rank need not reproduce the kernel
    cheap_to_build = False  # each option is an ALS fit: the local search keeps to the scored ones
    # its stages lose too much at 4 bits: a resnet20 the score search made mostly of CP chains (93.2 % in float)
    # fell to 49 % with 4-bit weights alone and 12 % at W4A4, and distillation did not recover it (10 % after
    # an epoch); the same model with its CP chains at 8 bits kept 92.1 % before any training
    low_bit_stages = False
    SEARCH_SWEEPS = 25  # scoring many candidate ranks needs a cheaper fit than CPConfig's default 200 sweeps

    @classmethod
    def search_options(cls, auto_config) -> dict:
        """AutoConfig scores and builds CP candidates with one and the same fit: 25 ALS sweeps, stabilised only
        with ``AutoConfig(stable_cp=True)``."""
        return {"n_iter_max": cls.SEARCH_SWEEPS, "stabilize": bool(auto_config.stable_cp)}

    @classmethod
    def check(cls, spec, options) -> None:
        require_conv("CP", spec)
        form = str(options.get("form", "4"))
        if form not in FORMS:
            raise ValueError(f"CP form must be one of {FORMS}, got {options.get('form')!r}")

    @staticmethod
    def _form(spec: ConvSpec, options) -> str:
        return "4" if str(options.get("form", "4")) == "4" and spec.dim == 2 else "3"

    @classmethod
    def _group_shape(cls, spec: ConvSpec, options) -> tuple[int, ...]:
        if cls._form(spec, options) == "4":
            return (spec.out_per_group, spec.in_per_group, *spec.kernel_size)
        return (spec.out_per_group, spec.in_per_group, spec.kernel_numel)

    @classmethod
    def max_ranks(cls, spec: ConvSpec, options) -> tuple[int, ...]:
        return (cp_max_rank(cls._group_shape(spec, options)),)

    @classmethod
    def spectra(cls, layer, spec: ConvSpec, options):
        kernels = group_kernels(layer.weight, spec.groups)
        return (tuple(svdvals(unfold(w, mode)) for w in kernels for mode in (0, 1)),)

    @classmethod
    def build(cls, spec: ConvSpec, ranks, device=None, **options) -> CPConv:
        (r,) = ranks
        g = spec.groups
        gr = g * r
        form = cls._form(spec, options)
        stages = {"first": spec.pointwise(spec.in_channels, gr, g, False, device)}
        if form == "4":
            stages["vertical"] = spec.along_axis(0, gr, gr, gr, False, device)
            stages["horizontal"] = spec.along_axis(1, gr, gr, gr, False, device)
        else:
            stages["depthwise"] = spec.full(gr, gr, gr, False, device)
        stages["last"] = spec.pointwise(gr, spec.out_channels, g, spec.bias, device)
        return cls(
            as_stages(**stages),
            spec,
            ranks,
            form=str(options.get("form", "4")),
            **{k: v for k, v in options.items() if k != "form"},
        )

    def set_cp_factors(self, group_factors: list[list[Tensor]]) -> None:
        """Load per-group CP factors ``[A_out, A_in, A_h, A_w]`` (form 4) or ``[A_out, A_in, A_spatial]``."""
        ones = [1] * self.spec.dim
        k = self.spec.kernel_size
        firsts, lasts, spatial = [], [], []
        for factors in group_factors:
            a_out, a_in = factors[0], factors[1]
            r = a_out.shape[1]
            firsts.append(a_in.T.reshape(r, a_in.shape[0], *ones))
            lasts.append(a_out.reshape(a_out.shape[0], r, *ones))
            spatial.append(factors[2:])
        copy_into(self.first.weight, torch.cat(firsts))
        copy_into(self.last.weight, torch.cat(lasts))
        if "vertical" in self._modules:
            copy_into(self.vertical.weight, torch.cat([s[0].T.reshape(-1, 1, k[0], 1) for s in spatial]))
            copy_into(self.horizontal.weight, torch.cat([s[1].T.reshape(-1, 1, 1, k[1]) for s in spatial]))
        else:
            copy_into(self.depthwise.weight, torch.cat([s[0].T.reshape(-1, 1, *k) for s in spatial]))

    def _set_factors(self, layer: nn.Module) -> None:
        form = self._form(self.spec, self.options)
        opts = {k: v for k, v in self.options.items() if k in ("n_iter_max", "seed", "stabilize", "tol")}
        group_factors = []
        for w in group_kernels(layer.weight, self.spec.groups):
            tensor = w if form == "4" else w.reshape(w.shape[0], w.shape[1], -1)
            result = cp(tensor, self.ranks[0], **opts)
            group_factors.append(list(cp_balance(result.weights, result.factors)))
        self.set_cp_factors(group_factors)
        if layer.bias is not None:
            self.last.bias.copy_(layer.bias)

    def group_factors(self) -> list[list[Tensor]]:
        """The CP factors of each group, float64, as ``[A_out, A_in, *spatial]``."""
        g, r = self.spec.groups, self.ranks[0]
        out = []
        first, last = self.first.weight.double().chunk(g), self.last.weight.double().chunk(g)
        if "vertical" in self._modules:
            sp = [self.vertical.weight.double().chunk(g), self.horizontal.weight.double().chunk(g)]
        else:
            sp = [self.depthwise.weight.double().chunk(g)]
        for i in range(g):
            a_out = last[i].reshape(last[i].shape[0], r)
            a_in = first[i].reshape(r, -1).T
            out.append([a_out, a_in, *(s[i].reshape(r, -1).T for s in sp)])
        return out

    def _chain_weight(self) -> Tensor:
        ws = []
        for factors in self.group_factors():
            a_out, a_in, *spatial = factors
            if len(spatial) == 2:
                w = torch.einsum("or,cr,ir,jr->ocij", a_out, a_in, spatial[0], spatial[1])
            else:
                w = torch.einsum("or,cr,sr->ocs", a_out, a_in, spatial[0]).reshape(
                    a_out.shape[0], a_in.shape[0], *self.spec.kernel_size
                )
            ws.append(w)
        return torch.cat(ws)

    def rank_one_norms(self) -> Tensor:
        """Norms of the rank-one terms of every group (the "sensitivity" that stabilised CP keeps bounded)."""
        norms = []
        for factors in self.group_factors():
            n = torch.ones(factors[0].shape[1], dtype=torch.float64)
            for f in factors:
                n = n * f.norm(dim=0)
            norms.append(n)
        return torch.cat(norms)


def exact_cp_factors(weight: Tensor, groups: int, form: str = "4") -> list[list[Tensor]]:
    """An exact CP construction of rank ``C_in/g * prod(kernel)`` for each group (one rank-one term per input
    index): ``A_in``, ``A_h``, ``A_w`` are 0/1 selectors and ``A_out`` carries the kernel's columns."""
    out = []
    for w in group_kernels(weight, groups):
        o, c, *k = w.shape
        if form == "4" and len(k) == 2:
            n = c * k[0] * k[1]
            idx = torch.arange(n)
            ci, ai, bi = idx // (k[0] * k[1]), (idx // k[1]) % k[0], idx % k[1]
            eye = lambda size, at: torch.nn.functional.one_hot(at, size).double().T  # noqa: E731
            out.append([w.reshape(o, n), eye(c, ci), eye(k[0], ai), eye(k[1], bi)])
        else:
            s = 1
            for d in k:
                s *= d
            n = c * s
            idx = torch.arange(n)
            oh = torch.nn.functional.one_hot
            out.append([w.reshape(o, n), oh(idx // s, c).double().T, oh(idx % s, s).double().T])
    if not out:
        raise NotFactorizable("empty kernel")
    return out
