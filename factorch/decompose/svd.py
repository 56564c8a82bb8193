"""Truncated SVD of a matrix and the spatial (vertical x horizontal) SVD of a 2-D conv kernel."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from factorch.decompose._common import as_float64, check_rank, fix_column_signs

__all__ = [
    "SVD",
    "SpatialSVD",
    "spatial_svd",
    "spatial_svd_max_rank",
    "spatial_svd_reconstruct",
    "truncated_svd",
    "truncated_svd_of_product",
]


class SVD(NamedTuple):
    """A rank-``r`` SVD ``matrix ≈ u @ diag(s) @ vh``.

    Attributes:
        u: left singular vectors, shape ``(m, r)``, orthonormal columns.
        s: singular values, shape ``(r,)``, non-increasing and >= 0.
        vh: right singular vectors (transposed), shape ``(r, n)``, orthonormal rows.
    """

    u: Tensor
    s: Tensor
    vh: Tensor


class SpatialSVD(NamedTuple):
    """A 2-D conv kernel split into a vertical ``(kh, 1)`` conv followed by a horizontal ``(1, kw)`` conv.

    Attributes:
        vertical: weight of the first conv, shape ``(r, C_in, kh, 1)``.
        horizontal: weight of the second conv, shape ``(C_out, r, 1, kw)``.
    """

    vertical: Tensor
    horizontal: Tensor


def truncated_svd(matrix: Tensor, rank: int) -> SVD:
    """Best rank-``rank`` approximation of a matrix in the Frobenius and spectral norms (Eckart-Young).

    Computed in float64 with ``torch.linalg.svd(full_matrices=False)``; the sign of each singular pair
    is fixed (largest-magnitude entry of each ``u`` column positive), so the result is deterministic.

    Args:
        matrix: a real 2-D tensor of shape ``(m, n)``.
        rank: number of singular triplets kept, ``1 <= rank <= min(m, n)``.

    Returns:
        ``SVD(u, s, vh)`` in float64 with shapes ``(m, rank)``, ``(rank,)``, ``(rank, n)``.

    Raises:
        ValueError: ``rank`` is out of range, or ``matrix`` is not a finite non-empty 2-D tensor.

    References:
        Eckart & Young 1936, "The approximation of one matrix by another of lower rank".
    """
    a = as_float64(matrix, "matrix", ndim=2)
    r = check_rank(rank, min(a.shape), "rank")
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    signs = fix_column_signs(u)
    return SVD(u * signs, s.clone(), vh * signs[:, None])


def truncated_svd_of_product(left: Tensor, right: Tensor, rank: int) -> SVD:
    """Best rank-``rank`` approximation of ``left @ right`` without forming the product.

    With the thin QR decompositions ``left = Q_l R_l`` and ``right^T = Q_r R_r``, the product is
    ``Q_l (R_l R_r^T) Q_r^T``; the SVD of the small ``k x k`` middle, mapped back through the orthonormal
    ``Q``'s, is the SVD of the product. This is how an already low-rank layer (e.g. after fine-tuning, when
    its two factors are no longer orthonormal) is truncated to a smaller rank, exactly as
    :func:`truncated_svd` of the product would (Eckart-Young), at the cost of the factors' size.

    Args:
        left: shape ``(m, k)``.
        right: shape ``(k, n)``.
        rank: ``1 <= rank <= min(m, n, k)``.

    Returns:
        ``SVD(u, s, vh)`` in float64, shapes ``(m, rank)``, ``(rank,)``, ``(rank, n)``, signs fixed as in
        :func:`truncated_svd`.

    Raises:
        ValueError: the shapes do not chain, or ``rank`` is out of range.

    References:
        Golub & Van Loan, "Matrix Computations" (QR-based SVD of a product); Gusak et al. 2019 (MUSCO:
        multi-stage compression repeatedly truncates the factorized layers).
    """
    a = as_float64(left, "left", ndim=2)
    b = as_float64(right, "right", ndim=2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"left {tuple(a.shape)} and right {tuple(b.shape)} do not chain (inner sizes differ)")
    r = check_rank(rank, min(a.shape[0], b.shape[1], a.shape[1]), "rank")
    q_l, r_l = torch.linalg.qr(a)
    q_r, r_r = torch.linalg.qr(b.T)
    u, s, vh = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
    u, s, vh = q_l @ u[:, :r], s[:r], vh[:r] @ q_r.T
    signs = fix_column_signs(u)
    return SVD(u * signs, s.clone(), vh * signs[:, None])


def spatial_svd_max_rank(shape: tuple[int, ...] | torch.Size) -> int:
    """Largest useful rank of :func:`spatial_svd` for a kernel of ``shape = (C_out, C_in, kh, kw)``.

    It is ``min(C_in * kh, C_out * kw)``, the rank at which the split is exact.

    Raises:
        ValueError: ``shape`` does not have four positive entries.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"shape must be (C_out, C_in, kh, kw) with positive entries, got {tuple(shape)}")
    c_out, c_in, kh, kw = dims
    return min(c_in * kh, c_out * kw)


def spatial_svd(kernel: Tensor, rank: int) -> SpatialSVD:
    """Split a ``(kh, kw)`` conv into a ``(kh, 1)`` conv with ``rank`` outputs and a ``(1, kw)`` conv.

    The kernel ``W[o, c, i, j]`` is viewed as the matrix ``M[(c, i), (o, j)]`` of shape
    ``(C_in * kh, C_out * kw)``; its truncated SVD ``U S V^T`` gives
    ``vertical[r, c, i, 0] = U[(c, i), r] * sqrt(s_r)`` and
    ``horizontal[o, r, 0, j] = sqrt(s_r) * V^T[r, (o, j)]``.
    Composing ``conv2d(x, vertical)`` then ``conv2d(., horizontal)`` equals ``conv2d(x, W)`` at full rank
    (the vertical conv takes the kernel's row padding/stride/dilation, the horizontal one the column ones);
    below it, the composed kernel is the best rank-``rank`` approximation of ``M``.

    Args:
        kernel: conv weight of shape ``(C_out, C_in, kh, kw)``.
        rank: number of intermediate channels, ``1 <= rank <= spatial_svd_max_rank(kernel.shape)``.

    Returns:
        ``SpatialSVD(vertical, horizontal)`` in float64.

    Raises:
        ValueError: ``kernel`` is not 4-D, or ``rank`` is out of range.

    References:
        Jaderberg, Vedaldi & Zisserman 2014, "Speeding up Convolutional Neural Networks with Low Rank
        Expansions" (scheme 2); the spatial SVD of Qualcomm AIMET.
    """
    w = as_float64(kernel, "kernel", ndim=4)
    c_out, c_in, kh, kw = w.shape
    r = check_rank(rank, spatial_svd_max_rank(w.shape), "rank")
    m = w.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)
    u, s, vh = truncated_svd(m, r)
    root = s.sqrt()
    vertical = (u * root).T.reshape(r, c_in, kh, 1)
    horizontal = (root[:, None] * vh).reshape(r, c_out, 1, kw).transpose(0, 1)
    return SpatialSVD(vertical.contiguous(), horizontal.contiguous())


def spatial_svd_reconstruct(vertical: Tensor, horizontal: Tensor) -> Tensor:
    """The ``(C_out, C_in, kh, kw)`` kernel equivalent to the two convs of :func:`spatial_svd`.

    Raises:
        ValueError: the two weights do not have the shapes ``(r, C_in, kh, 1)`` and ``(C_out, r, 1, kw)``.
    """
    if vertical.ndim != 4 or horizontal.ndim != 4 or vertical.shape[3] != 1 or horizontal.shape[2] != 1:
        raise ValueError(
            "vertical must be (r, C_in, kh, 1) and horizontal (C_out, r, 1, kw), got "
            f"{tuple(vertical.shape)} and {tuple(horizontal.shape)}"
        )
    if vertical.shape[0] != horizontal.shape[1]:
        raise ValueError(
            f"rank mismatch: vertical has {vertical.shape[0]} outputs, horizontal {horizontal.shape[1]} inputs"
        )
    return torch.einsum("rci,orj->ocij", vertical[..., 0], horizontal[:, :, 0, :])
