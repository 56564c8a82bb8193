"""Tensor contraction and tensor regression layers (Kossaifi et al. 2017, 2020), heads that keep the
activation tensor's modes instead of flattening it.

* :class:`TCL`: ``(N, C, H, W) -> (N, C', H', W')`` by one factor matrix per mode,
  ``Y = X x_1 U_C x_2 U_H x_3 U_W``: ``C'C HW + C'H'H W + C'H'W'W`` MACs per sample instead of a dense map.
* :class:`TRL`: ``(N, C, H, W) -> (N, out)``, a linear regression whose weight tensor ``(C, H, W, out)`` is held
  in Tucker form (core ``(r_C, r_H, r_W, r_out)`` and one factor per mode); computed as the input projected on
  the three input factors, the core, then the output factor, never forming the full weight.

Both run as matrix products along one mode at a time (``torch.matmul``; ``einsum`` would turn contractions of
size 1 into element-wise products, which no MAC counter sees), so ``factorch.profile`` counts them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _shape3(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    t = tuple(int(v) for v in shape)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be 3 positive sizes (channels, height, width), got {tuple(shape)!r}")
    return t  # type: ignore[return-value]


def mode_product(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """``x`` with its axis ``mode`` (size ``I``) mapped by ``matrix`` ``(J, I)`` to size ``J``."""
    return (x.movedim(mode, -1) @ matrix.t()).movedim(-1, mode)


def _orthonormal(rows: int, cols: int, generator: torch.Generator | None = None) -> Tensor:
    """``rows x cols`` with orthonormal columns (or rows, when wider than tall)."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, _ = torch.linalg.qr(a)
    return q if rows >= cols else q.t()


class TCL(nn.Module):
    """Tensor contraction layer: ``Y[n, a, b, d] = sum_{c,h,w} X[n, c, h, w] U_C[a, c] U_H[b, h] U_W[d, w]``.

    Args:
        input_shape: ``(C, H, W)`` of one input.
        output_shape: ``(C', H', W')``.
        bias: one learned value added per output element.
    """

    def __init__(self, input_shape: Sequence[int], output_shape: Sequence[int], *, bias: bool = False) -> None:
        super().__init__()
        self.input_shape = _shape3("TCL input_shape", input_shape)
        self.output_shape = _shape3("TCL output_shape", output_shape)
        self.factors = nn.ParameterList(
            [nn.Parameter(_orthonormal(o, i)) for o, i in zip(self.output_shape, self.input_shape, strict=True)]
        )
        self.bias = nn.Parameter(torch.zeros(self.output_shape)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"TCL expects inputs (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        y = x
        for mode, factor in enumerate(self.factors, start=1):
            y = mode_product(y, factor, mode)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, output_shape={self.output_shape}, bias={self.bias is not None}"


class TRL(nn.Module):
    """Tensor regression layer: ``y[n, o] = sum_{c,h,w} X[n, c, h, w] W[c, h, w, o] + b[o]`` with
    ``W = G x_1 U_C x_2 U_H x_3 U_W x_4 U_out`` (Tucker form, core ``G`` of shape ``rank``).

    Replaces ``flatten + nn.Linear(C*H*W, out)``: :meth:`from_linear` starts from a trained head.

    Args:
        input_shape: ``(C, H, W)`` of one input.
        out_features: outputs.
        rank: ``(r_C, r_H, r_W, r_out)``, or a float ``f`` in ``(0, 1]``: each rank ``ceil(f * size)``.
        bias: a bias per output.
    """

    def __init__(
        self, input_shape: Sequence[int], out_features: int, rank: Sequence[int] | float = 0.5, *, bias: bool = True
    ) -> None:
        super().__init__()
        self.input_shape = _shape3("TRL input_shape", input_shape)
        if not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"TRL: out_features must be a positive int, got {out_features!r}")
        self.out_features = out_features
        sizes = (*self.input_shape, out_features)
        if isinstance(rank, (int, float)) and not isinstance(rank, bool):
            if not 0 < rank <= 1:
                raise ValueError(f"TRL: a rank fraction must be in (0, 1], got {rank!r}")
            ranks = tuple(max(1, math.ceil(rank * s)) for s in sizes)
        else:
            ranks = tuple(int(r) for r in rank)
            if len(ranks) != 4 or any(not 1 <= r <= s for r, s in zip(ranks, sizes, strict=True)):
                raise ValueError(f"TRL: rank must be 4 ints, each in [1, size] for sizes {sizes}, got {tuple(rank)!r}")
        self.rank = ranks
        self.factors = nn.ParameterList([nn.Parameter(_orthonormal(s, r)) for s, r in zip(sizes, ranks, strict=True)])
        fan_in = math.prod(self.input_shape)
        self.core = nn.Parameter(
            torch.randn(ranks) * math.sqrt(1.0 / fan_in) * math.sqrt(fan_in / math.prod(ranks[:3]))
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"TRL expects inputs (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        z = x
        for mode, factor in enumerate(self.factors[:3], start=1):
            z = mode_product(z, factor.t(), mode)  # (N, r_C, r_H, r_W) at the end
        z = z.flatten(1) @ self.core.flatten(0, 2)  # (N, r_out)
        y = z @ self.factors[3].t()
        return y if self.bias is None else y + self.bias

    def weight(self) -> Tensor:
        """The full regression weight ``(C, H, W, out)``."""
        uc, uh, uw, uo = self.factors
        return torch.einsum("abdr,ca,hb,wd,or->chwo", self.core, uc, uh, uw, uo)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, input_shape: Sequence[int], rank: Sequence[int] | float = 0.5, *, iters: int = 10
    ) -> TRL:
        """A TRL approximating ``linear`` applied to the flattened ``input_shape`` input (row-major ``C, H, W``),
        by a truncated higher-order SVD refined with ``iters`` rounds of HOOI (tensorly's ``tucker``)."""
        import tensorly as tl  # noqa: PLC0415 - imported where it is used
        from tensorly.decomposition import tucker  # noqa: PLC0415

        shape = _shape3("TRL input_shape", input_shape)
        if linear.in_features != math.prod(shape):
            raise ValueError(
                f"TRL.from_linear: the Linear takes {linear.in_features} inputs, input_shape {shape} gives "
                f"{math.prod(shape)}"
            )
        new = cls(shape, linear.out_features, rank, bias=linear.bias is not None).to(linear.weight)
        w = linear.weight.detach().double().t().reshape(*shape, linear.out_features)  # (C, H, W, out)
        with tl.backend_context("pytorch"):
            core, factors = tucker(w, rank=list(new.rank), n_iter_max=iters, init="svd", random_state=0)
        new.core.copy_(core)
        for p, f in zip(new.factors, factors, strict=True):
            p.copy_(f)
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
        return new

    @classmethod
    @torch.no_grad()
    def from_pooled_linear(
        cls, linear: nn.Linear, input_shape: Sequence[int], rank: Sequence[int] | float = 0.5
    ) -> TRL:
        """A TRL equal to global average pooling of the ``input_shape`` map followed by ``linear``: its weight
        ``W[c, h, w, o] = linear.weight[o, c] / (H * W)`` has multilinear rank at most ``(min(C, out), 1, 1,
        min(C, out))``, so any ``rank`` at least that is exact (the TRL then learns spatial structure when
        fine-tuned)."""
        c, h, w = _shape3("TRL input_shape", input_shape)
        if linear.in_features != c:
            raise ValueError(f"TRL.from_pooled_linear: the Linear takes {linear.in_features} inputs, the map has {c}")
        flat = nn.Linear(c * h * w, linear.out_features, bias=linear.bias is not None).to(linear.weight)
        flat.weight.copy_(linear.weight.repeat_interleave(h * w, dim=1) / (h * w))
        if linear.bias is not None:
            flat.bias.copy_(linear.bias)
        return cls.from_linear(flat, (c, h, w), rank)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, out_features={self.out_features}, rank={self.rank}"
