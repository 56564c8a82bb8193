"""Tensor-train (TT-matrix) layers for large Linear and Embedding layers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from factorch.decompose import factorize_dim, tt_matrix, tt_matrix_to_dense, tt_max_ranks
from factorch.layers._spec import EmbeddingSpec, LinearSpec
from factorch.layers.base import FactorizedLayer, NotFactorizable, as_stages, svdvals
from factorch.rank import RankLike, as_selector


def _dims(n: int, given, n_cores: int, what: str) -> tuple[int, ...]:
    if given is None:
        return tuple(factorize_dim(n, n_cores))
    dims = tuple(int(d) for d in given)
    if not dims or any(d < 1 for d in dims) or math.prod(dims) < n:
        raise ValueError(f"{what} {dims} must be positive and multiply to at least {n}")
    return dims


class TTCores(nn.Module):
    """The cores of a TT-matrix as parameters ``core0 ... core{d-1}``, shape ``(r_{k-1}, m_k, n_k, r_k)``."""

    def __init__(self, row_dims, col_dims, ranks, device=None, dtype=None) -> None:
        super().__init__()
        bonds = (1, *ranks, 1)
        for k, (m, n) in enumerate(zip(row_dims, col_dims)):
            core = torch.empty(bonds[k], m, n, bonds[k + 1], device=device, dtype=dtype)
            if core.device.type != "meta":
                nn.init.normal_(core, std=(1.0 / max(1, bonds[k] * n)) ** 0.5)
            self.register_parameter(f"core{k}", nn.Parameter(core))
        self.d = len(row_dims)

    def cores(self) -> list[Tensor]:
        return [getattr(self, f"core{k}") for k in range(self.d)]


def _padded(weight: Tensor, row_dims, col_dims) -> Tensor:
    """The weight in float64, zero-padded to ``prod(row_dims) x prod(col_dims)``."""
    w = torch.zeros(math.prod(row_dims), math.prod(col_dims), dtype=torch.float64)
    w[: weight.shape[0], : weight.shape[1]] = weight.detach().double()
    return w


def _tt_problem_spectra(weight: Tensor, row_dims, col_dims):
    """Singular values of the TT unfoldings of the (zero-padded) weight, one per bond."""
    w = _padded(weight, row_dims, col_dims)
    d = len(row_dims)
    t = w.reshape(*row_dims, *col_dims)
    t = t.permute(*[i for k in range(d) for i in (k, d + k)]).reshape([row_dims[k] * col_dims[k] for k in range(d)])
    out = []
    for k in range(1, d):
        out.append((svdvals(t.reshape(math.prod(t.shape[:k]), -1)),))
    return tuple(out)


class _TTMixin:
    """What TT layers share: the dimension factorisations (rows = ``dim_names[0]``, columns = ``dim_names[1]``
    of the spec), the rank problem and rank resolution."""

    rank_names = ("tt_ranks",)
    spec_type: type = LinearSpec
    dim_names: tuple[str, str] = ("out_features", "in_features")

    @classmethod
    def check(cls, spec, options) -> None:
        if not isinstance(spec, cls.spec_type):
            raise NotFactorizable(f"{cls.__name__} factorizes nn.{cls.spec_type.__name__.removesuffix('Spec')} layers")
        cls._geometry(spec, options)

    @classmethod
    def _geometry(cls, spec, options) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n_cores = int(options.get("n_cores", 3))
        if n_cores < 2:
            raise ValueError(f"n_cores must be >= 2, got {n_cores}")
        rows = _dims(getattr(spec, cls.dim_names[0]), options.get("row_dims"), n_cores, "row_dims")
        cols = _dims(getattr(spec, cls.dim_names[1]), options.get("col_dims"), len(rows), "col_dims")
        if len(rows) != len(cols):
            raise ValueError(f"row_dims {rows} and col_dims {cols} must have the same length")
        return rows, cols

    @classmethod
    def spectra(cls, layer, spec, options):
        return _tt_problem_spectra(layer.weight, *cls._geometry(spec, options))

    @classmethod
    def max_ranks(cls, spec, options):
        rows, cols = cls._geometry(spec, options)
        return tuple(tt_max_ranks(rows, cols))

    @classmethod
    def resolve_ranks(cls, layer, rank: RankLike, *, input_size=None, name: str = "", **options):
        if isinstance(rank, int) and not isinstance(rank, bool):
            if rank < 1:
                raise ValueError(f"{name}: rank must be >= 1, got {rank}")
            # an int is the largest TT-rank: every bond is clipped to what it can hold
            return tuple(min(rank, m) for m in cls.max_ranks(cls._spec_of(layer), options))
        return as_selector(rank)(cls.rank_problem(layer, input_size=input_size, name=name, **options))

    @staticmethod
    def _spec_of(layer):
        from factorch.layers._spec import spec_of

        return spec_of(layer)

    def _set_cores(self, weight: Tensor) -> None:
        """TT-SVD of the (zero-padded) dense weight into this layer's cores."""
        w = _padded(weight, self.row_dims, self.col_dims)
        for p, c in zip(self.cores.cores(), tt_matrix(w, self.row_dims, self.col_dims, list(self.ranks)).cores):
            p.copy_(c.to(p.dtype))

    def tt_cores(self) -> list[Tensor]:
        return self.cores.cores()


class TTLinear(_TTMixin, FactorizedLayer):
    """A Linear layer whose weight is a TT-matrix (output dims ``m_k``, input dims ``n_k``).

    The input is zero-padded to ``prod(n_k)`` and the output cut to ``out_features`` when the
    factorisations over-cover the dimensions. The forward pass contracts one core at a time (einsum).

    References: Novikov et al. 2015, "Tensorizing neural networks"; Oseledets 2011 (TT-SVD).
    """

    method = "tt"

    spec_type = LinearSpec
    dim_names = ("out_features", "in_features")

    @classmethod
    def build(cls, spec: LinearSpec, ranks, device=None, **options) -> TTLinear:
        rows, cols = cls._geometry(spec, options)
        module = cls(as_stages(cores=TTCores(rows, cols, ranks, device, spec.torch_dtype)), spec, ranks, **options)
        module.row_dims, module.col_dims = rows, cols
        if spec.bias:
            module.bias = nn.Parameter(torch.zeros(spec.out_features, device=device, dtype=spec.torch_dtype))
        else:
            module.register_parameter("bias", None)
        return module

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        n_pad = math.prod(self.col_dims)
        t = x.reshape(-1, x.shape[-1])
        if n_pad > t.shape[1]:
            t = nn.functional.pad(t, (0, n_pad - t.shape[1]))
        a = t.shape[0]
        t = t.reshape(a, 1, n_pad)
        for core in self.cores.cores():
            r_prev, m, n, r = core.shape
            t = t.reshape(a, r_prev, n, -1)
            t = torch.einsum("apns,pmnq->amqs", t, core)
            a = a * m
            t = t.reshape(a, r, -1)
        out = t.reshape(*lead, math.prod(self.row_dims))[..., : self.spec.out_features]
        return out + self.bias if self.bias is not None else out

    def _set_factors(self, layer: nn.Linear) -> None:
        self._set_cores(layer.weight)
        if layer.bias is not None:
            self.bias.copy_(layer.bias)

    def _chain_weight(self) -> Tensor:
        dense = tt_matrix_to_dense([c.double() for c in self.cores.cores()])
        return dense[: self.spec.out_features, : self.spec.in_features]

    def output_bias(self):
        return self.bias


class TTEmbedding(_TTMixin, FactorizedLayer):
    """An Embedding whose table is a TT-matrix (vocabulary dims ``m_k``, embedding dims ``n_k``).

    Each looked-up row is the product of the matching core slices. ``padding_idx`` rows are returned as
    zeros, as in ``nn.Embedding``.

    References: Khrulkov et al. 2019, "Tensorized embedding layers for efficient model compression".
    """

    method = "tt"

    spec_type = EmbeddingSpec
    dim_names = ("num_embeddings", "embedding_dim")

    @classmethod
    def build(cls, spec: EmbeddingSpec, ranks, device=None, **options) -> TTEmbedding:
        rows, cols = cls._geometry(spec, options)
        module = cls(as_stages(cores=TTCores(rows, cols, ranks, device, spec.torch_dtype)), spec, ranks, **options)
        module.row_dims, module.col_dims = rows, cols
        return module

    def forward(self, index: Tensor) -> Tensor:
        flat = index.reshape(-1)
        digits = []
        rest = flat
        for m in reversed(self.row_dims):
            digits.append(rest % m)
            rest = torch.div(rest, m, rounding_mode="floor")
        digits.reverse()
        t = None
        for core, digit in zip(self.cores.cores(), digits):
            g = core[:, digit].permute(1, 0, 2, 3)  # (L, r_prev, n_k, r_k)
            if t is None:
                t = g[:, 0]  # (L, n_1, r_1)
            else:
                t = torch.einsum("lar,lrbq->labq", t, g).reshape(g.shape[0], -1, g.shape[-1])
        out = t[:, : self.spec.embedding_dim, 0] if t is not None else flat
        if self.spec.padding_idx is not None:
            out = out.masked_fill((flat == self.spec.padding_idx)[:, None], 0.0)
        return out.reshape(*index.shape, self.spec.embedding_dim)

    def _set_factors(self, layer: nn.Embedding) -> None:
        self._set_cores(layer.weight)

    def _chain_weight(self) -> Tensor:
        dense = tt_matrix_to_dense([c.double() for c in self.cores.cores()])
        w = dense[: self.spec.num_embeddings, : self.spec.embedding_dim].clone()
        if self.spec.padding_idx is not None:
            w[self.spec.padding_idx] = 0
        return w

    def output_bias(self):
        return None
