"""Tensor-train (TT) matrix format of a dense matrix, computed by TT-SVD."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from factorch.decompose._common import as_float64, check_positive_int
from factorch.decompose.svd import truncated_svd

__all__ = ["TTMatrix", "factorize_dim", "tt_matrix", "tt_matrix_to_dense", "tt_max_ranks"]


class TTMatrix(NamedTuple):
    """A matrix in tensor-train format.

    Attributes:
        cores: ``d`` cores, core ``k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``;
            ``A[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``, the row and
            column multi-indices in C order (``i_1`` slowest).
    """

    cores: tuple[Tensor, ...]

    @property
    def row_dims(self) -> tuple[int, ...]:
        """``(m_1, ..., m_d)``."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def col_dims(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The inner TT-ranks ``(r_1, ..., r_{d-1})``."""
        return tuple(int(c.shape[3]) for c in self.cores[:-1])


def _check_dims(dims: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) < 1:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {dims!r}")
    return tuple(check_positive_int(v, f"{name}[{k}]") for k, v in enumerate(dims))


def tt_max_ranks(row_dims: Sequence[int], col_dims: Sequence[int]) -> tuple[int, ...]:
    """The TT-ranks ``(r_1, ..., r_{d-1})`` at which the TT-matrix format is exact for every matrix.

    ``r_k = min(prod_{i <= k} m_i n_i, prod_{i > k} m_i n_i)``.

    Raises:
        ValueError: the dimension lists are empty, of different lengths, or hold non-positive entries.
    """
    rows = _check_dims(row_dims, "row_dims")
    cols = _check_dims(col_dims, "col_dims")
    if len(rows) != len(cols):
        raise ValueError(f"row_dims and col_dims must have the same length, got {len(rows)} and {len(cols)}")
    sizes = [m * n for m, n in zip(rows, cols, strict=True)]
    return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))


def _resolve_ranks(ranks: int | Sequence[int], max_ranks: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        r = check_positive_int(ranks, "ranks")
        return tuple(min(r, m) for m in max_ranks)
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise TypeError(f"ranks must be an int or a sequence of {len(max_ranks)} ints, got {ranks!r}")
    if len(ranks) != len(max_ranks):
        raise ValueError(f"ranks must hold d - 1 = {len(max_ranks)} ints, got {len(ranks)}: {list(ranks)}")
    pairs = enumerate(zip(ranks, max_ranks, strict=True))
    return tuple(min(check_positive_int(r, f"ranks[{k}]"), m) for k, (r, m) in pairs)


def tt_matrix(matrix: Tensor, row_dims: Sequence[int], col_dims: Sequence[int], ranks: int | Sequence[int]) -> TTMatrix:
    """TT-matrix decomposition of a dense matrix by TT-SVD (sequential truncated SVDs).

    The matrix ``(M, N)`` is reshaped to ``(m_1, .., m_d, n_1, .., n_d)``, the modes are interleaved to
    ``(m_1 n_1, .., m_d n_d)``, and TT-SVD keeps at most ``r_k`` singular vectors at each split. The error
    satisfies ``||A - TT||_F^2 <= sum_k (discarded squared singular values at split k)`` (quasi-optimal);
    at the ranks of :func:`tt_max_ranks` the format is exact.

    Args:
        matrix: a real matrix of shape ``(M, N)``; a ``Linear`` weight is ``(out_features, in_features)``.
        row_dims: ``(m_1, .., m_d)`` with ``prod = M`` (pad the matrix first if needed, see
            :func:`factorize_dim`).
        col_dims: ``(n_1, .., n_d)`` with ``prod = N``, same length as ``row_dims``.
        ranks: the maximum TT-rank (an int applied to every split) or ``d - 1`` ints; each is clipped to
            :func:`tt_max_ranks`, and the cores have exactly these clipped ranks (so a layer's shapes follow
            from dims and ranks alone). Where an earlier, smaller rank leaves fewer singular vectors than
            asked for, the missing terms are zeros.

    Returns:
        ``TTMatrix(cores)`` in float64; SVD signs are fixed, so the result is deterministic.

    Raises:
        ValueError: products of the dims do not match the matrix, or ranks are invalid.

    References:
        Oseledets 2011, "Tensor-Train Decomposition" (TT-SVD); Novikov et al. 2015, "Tensorizing Neural
        Networks" (TT-matrix layers).
    """
    a = as_float64(matrix, "matrix", ndim=2)
    max_ranks = tt_max_ranks(row_dims, col_dims)
    rows, cols = tuple(int(m) for m in row_dims), tuple(int(n) for n in col_dims)
    if math.prod(rows) != a.shape[0] or math.prod(cols) != a.shape[1]:
        raise ValueError(
            f"prod(row_dims)={math.prod(rows)} and prod(col_dims)={math.prod(cols)} must equal the matrix "
            f"shape {tuple(a.shape)}"
        )
    target = _resolve_ranks(ranks, max_ranks)
    d = len(rows)
    order = [k for pair in zip(range(d), range(d, 2 * d), strict=True) for k in pair]
    rest = a.reshape(*rows, *cols).permute(order).contiguous()
    cores = []
    r_prev = 1
    for k in range(d - 1):
        unfolding = rest.reshape(r_prev * rows[k] * cols[k], -1)
        r = target[k]
        u, s, vh = truncated_svd(unfolding, min(r, *unfolding.shape))
        if u.shape[1] < r:  # an earlier truncation left too few rows: pad with zero terms (exact)
            pad = r - u.shape[1]
            u = torch.cat([u, u.new_zeros(u.shape[0], pad)], dim=1)
            s = torch.cat([s, s.new_zeros(pad)])
            vh = torch.cat([vh, vh.new_zeros(pad, vh.shape[1])])
        cores.append(u.reshape(r_prev, rows[k], cols[k], r))
        rest = s[:, None] * vh
        r_prev = r
    cores.append(rest.reshape(r_prev, rows[-1], cols[-1], 1))
    return TTMatrix(tuple(c.contiguous() for c in cores))


def tt_matrix_to_dense(cores: Sequence[Tensor]) -> Tensor:
    """The dense ``(prod m_k, prod n_k)`` matrix of a TT-matrix (a ``TTMatrix`` or its ``cores``).

    Raises:
        ValueError: a core is not 4-D, or neighbouring ranks or the boundary ranks (1) do not match.
    """
    cores = cores.cores if isinstance(cores, TTMatrix) else tuple(cores)
    if not cores or any(c.ndim != 4 for c in cores):
        raise ValueError("cores must be a non-empty sequence of 4-D tensors (r_{k-1}, m_k, n_k, r_k)")
    if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
        raise ValueError("the first core must start with rank 1 and the last core end with rank 1")
    for k in range(len(cores) - 1):
        if cores[k].shape[3] != cores[k + 1].shape[0]:
            raise ValueError(
                f"rank mismatch between cores {k} and {k + 1}: {cores[k].shape[3]} vs {cores[k + 1].shape[0]}"
            )
    out = cores[0][0]  # (m, n, r)
    for core in cores[1:]:
        m, n, _ = out.shape
        out = torch.einsum("ijr,rkls->ikjls", out, core).reshape(m * core.shape[1], n * core.shape[2], -1)
    return out[..., 0]


def _divisors(n: int) -> list[int]:
    small, large = [], []
    for f in range(1, math.isqrt(n) + 1):
        if n % f == 0:
            small.append(f)
            if f != n // f:
                large.append(n // f)
    return small + large[::-1]


def _factorizations(n: int, d: int, smallest: int = 1) -> Iterator[tuple[int, ...]]:
    """All non-decreasing ``d``-tuples of ints >= ``smallest`` whose product is ``n``."""
    if d == 1:
        if n >= smallest:
            yield (n,)
        return
    for f in _divisors(n):
        if f < smallest:
            continue
        if f**d > n:
            break
        for rest in _factorizations(n // f, d - 1, f):
            yield (f, *rest)


def _best_factorization(n: int, d: int) -> tuple[int, ...]:
    # most balanced: least sum of squared log factors (their mean is fixed at log(n) / d); ties: lexicographic
    return min(_factorizations(n, d), key=lambda fs: (sum(math.log(f) ** 2 for f in fs), fs))


def factorize_dim(n: int, d: int, *, max_ratio: float = 4.0, allow_padding: bool = True) -> tuple[int, ...]:
    """Split ``n`` into ``d`` balanced factors (non-decreasing), e.g. to tensorize a layer dimension.

    Among the factorizations of ``n`` into ``d`` ints (ones allowed), it takes the most balanced: the one
    whose factors are closest to ``n ** (1 / d)`` in log scale (784, 3 -> (7, 8, 14)). If even that one has
    ``max(f) / min(f) > max_ratio`` (``n`` prime or awkward, e.g. 787 -> (1, 1, 787)) and ``allow_padding``,
    it returns the most balanced factorization of the smallest ``n' >= n`` that meets ``max_ratio``
    (787, 3 -> 792 = (8, 9, 11)): the product then exceeds ``n`` and the caller pads the dimension with
    ``prod - n`` zeros. The search always ends, at the latest at ``ceil(n ** (1 / d)) ** d``.

    Args:
        n: the integer to split, ``>= 1``.
        d: number of factors, ``>= 1``.
        max_ratio: largest acceptable ``max(f) / min(f)``, ``>= 1``.
        allow_padding: if False, return the most balanced exact factorization whatever its ratio.

    Returns:
        ``d`` factors in non-decreasing order with ``prod >= n`` (``== n`` when no padding was needed).

    Raises:
        ValueError: ``n`` or ``d`` < 1, or ``max_ratio`` < 1.

    References:
        Novikov et al. 2015, "Tensorizing Neural Networks" (balanced tensorization of layer dims).
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, numbers.Real) or not max_ratio >= 1:
        raise ValueError(f"max_ratio must be a real >= 1, got {max_ratio!r}")
    candidate = n
    while True:
        best = _best_factorization(candidate, d)
        if not allow_padding or best[-1] <= max_ratio * best[0]:
            return best
        candidate += 1
