"""Tucker-2 decomposition of a conv kernel: compress the two channel modes, keep the spatial modes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from factorch.decompose._common import as_float64, check_rank, check_seed, fix_column_signs, unfold

__all__ = ["Tucker2", "tucker2", "tucker2_of_tucker2", "tucker2_reconstruct"]

_INITS = ("svd", "random")


class Tucker2(NamedTuple):
    """``kernel ≈ core ×_0 out_factor ×_1 in_factor``.

    Attributes:
        core: shape ``(R_out, R_in, *spatial)``; equals ``kernel ×_0 out_factor^T ×_1 in_factor^T``.
        out_factor: shape ``(C_out, R_out)``, orthonormal columns.
        in_factor: shape ``(C_in, R_in)``, orthonormal columns.
    """

    core: Tensor
    out_factor: Tensor
    in_factor: Tensor


def _leading_left_singular_vectors(matrix: Tensor, k: int) -> Tensor:
    """Orthonormal basis of the ``k`` leading left singular vectors, sign-fixed.

    A wide matrix goes through the eigenvectors of its Gram matrix ``matrix @ matrix.T`` (cheaper than the
    SVD of a wide unfolding; HOOI only needs the spanned subspace, which is accurate whenever
    ``s_k > s_{k+1}``); a tall one through its SVD (completed to ``k`` columns if ``k`` exceeds its width).
    """
    rows, cols = matrix.shape
    if rows <= cols:
        u = torch.linalg.eigh(matrix @ matrix.T)[1].flip(-1)[:, :k]
    else:
        u = torch.linalg.svd(matrix, full_matrices=k > cols)[0][:, :k]
    return u * fix_column_signs(u)


def _project(tensor: Tensor, factor: Tensor, mode: int) -> Tensor:
    """``tensor ×_mode factor^T`` (contract mode ``mode`` of ``tensor`` with the rows of ``factor``)."""
    return torch.tensordot(tensor, factor, dims=([mode], [0])).movedim(-1, mode)


def _check_ranks(ranks: Sequence[int], c_out: int, c_in: int) -> tuple[int, int]:
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or len(ranks) != 2:
        raise ValueError(f"ranks must be a pair (R_out, R_in), got {ranks!r}")
    return check_rank(ranks[0], c_out, "ranks[0] (R_out)"), check_rank(ranks[1], c_in, "ranks[1] (R_in)")


def tucker2(
    kernel: Tensor,
    ranks: Sequence[int],
    *,
    n_iter_max: int = 100,
    init: str = "svd",
    tol: float = 1e-6,
    seed: int = 0,
) -> Tucker2:
    """Tucker-2 decomposition of a kernel along its output- and input-channel modes (HOOI).

    Starts from the truncated HOSVD of the two channel modes (``init="svd"``) or from seeded random
    orthonormal factors (``init="random"``), then runs higher-order orthogonal iteration restricted to
    modes 0 and 1; spatial modes are never compressed. Each sweep cannot increase the error
    ``||kernel||^2 - ||core||^2``; iterations stop once the relative gain in ``||core||`` falls below
    ``tol`` or after ``n_iter_max`` sweeps. Full ranks reproduce the kernel exactly.

    Implemented directly in torch (float64, no backend switching); ``tests/decompose`` cross-checks the
    reconstruction error against ``tensorly.decomposition.partial_tucker`` and
    ``benchmarks/decompose_peers.py`` times both on the reference models' kernels.

    Args:
        kernel: tensor of shape ``(C_out, C_in, *spatial)`` with any number (0, 1, 2, ...) of spatial modes.
        ranks: ``(R_out, R_in)`` with ``1 <= R_out <= C_out`` and ``1 <= R_in <= C_in``.
        n_iter_max: maximum number of HOOI sweeps (0 returns the truncated HOSVD).
        init: ``"svd"`` (HOSVD) or ``"random"``.
        tol: stopping tolerance on the relative change of ``||core|| / ||kernel||``.
        seed: seed of the random initialisation (only used with ``init="random"``).

    Returns:
        ``Tucker2(core, out_factor, in_factor)`` in float64; factor column signs are fixed so the result is
        deterministic.

    Raises:
        ValueError: a rank is out of range, ``kernel`` has fewer than 2 dimensions, or bad options.

    References:
        Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
        Applications"; De Lathauwer, De Moor & Vandewalle 2000 (HOSVD, HOOI).
    """
    w = as_float64(kernel, "kernel", min_ndim=2)
    c_out, c_in = w.shape[0], w.shape[1]
    r_out, r_in = _check_ranks(ranks, c_out, c_in)
    if isinstance(n_iter_max, bool) or not isinstance(n_iter_max, int) or n_iter_max < 0:
        raise ValueError(f"n_iter_max must be an int >= 0, got {n_iter_max!r}")
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")

    if init == "svd":
        u_out = _leading_left_singular_vectors(unfold(w, 0), r_out)
        u_in = _leading_left_singular_vectors(unfold(w, 1), r_in)
    else:
        gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
        u_out = torch.linalg.qr(torch.randn(c_out, r_out, generator=gen, dtype=torch.float64))[0].to(w.device)
        u_in = torch.linalg.qr(torch.randn(c_in, r_in, generator=gen, dtype=torch.float64))[0].to(w.device)

    norm = torch.linalg.vector_norm(w)
    core_norm = None
    for _ in range(n_iter_max):
        u_out = _leading_left_singular_vectors(unfold(_project(w, u_in, 1), 0), r_out)
        partial = _project(w, u_out, 0)
        u_in = _leading_left_singular_vectors(unfold(partial, 1), r_in)
        new_norm = torch.linalg.vector_norm(_project(partial, u_in, 1))
        if core_norm is not None and abs(float(new_norm - core_norm)) <= tol * float(norm):
            break
        core_norm = new_norm

    core = _project(_project(w, u_out, 0), u_in, 1)
    return Tucker2(core.contiguous(), u_out.contiguous(), u_in.contiguous())


def tucker2_of_tucker2(
    core: Tensor,
    out_factor: Tensor,
    in_factor: Tensor,
    ranks: Sequence[int],
    *,
    n_iter_max: int = 100,
    tol: float = 1e-6,
) -> Tucker2:
    """Tucker-2 at smaller ranks of the kernel ``core ×_0 out_factor ×_1 in_factor``, without forming it.

    The factors need not be orthonormal (e.g. after fine-tuning). With the thin QR decompositions
    ``out_factor = Q_o R_o`` and ``in_factor = Q_i R_i`` the kernel is ``(core ×_0 R_o ×_1 R_i) ×_0 Q_o ×_1 Q_i``;
    :func:`tucker2` (HOSVD + HOOI) of the small rotated core, with its factors mapped back through the
    orthonormal ``Q``'s, is the same iteration as :func:`tucker2` of the full kernel (the ``Q``'s change
    neither the singular values nor the error), at the cost of the core's size. The new factors merge
    into the layer's 1x1 convolutions, so the result is again one Tucker-2 layer (the MUSCO step).

    Args:
        core: shape ``(R_out, R_in, *spatial)``.
        out_factor: shape ``(C_out, R_out)`` with ``R_out <= C_out``.
        in_factor: shape ``(C_in, R_in)`` with ``R_in <= C_in``.
        ranks: the new ``(R_out', R_in')``, at most ``(R_out, R_in)``.
        n_iter_max: HOOI sweeps (see :func:`tucker2`).
        tol: HOOI stopping tolerance (see :func:`tucker2`).

    Returns:
        ``Tucker2(core', out_factor', in_factor')`` in float64, with orthonormal factors of shapes
        ``(C_out, R_out')`` and ``(C_in, R_in')``.

    Raises:
        ValueError: the shapes do not chain, a factor is wider than tall, or a rank is out of range.

    References:
        Gusak et al. 2019, "Automated multi-stage compression of neural networks" (MUSCO); De Lathauwer,
        De Moor & Vandewalle 2000 (HOOI).
    """
    c = as_float64(core, "core", min_ndim=2)
    u_out = as_float64(out_factor, "out_factor", ndim=2)
    u_in = as_float64(in_factor, "in_factor", ndim=2)
    if c.shape[0] != u_out.shape[1] or c.shape[1] != u_in.shape[1]:
        raise ValueError(
            f"core {tuple(c.shape)} does not match out_factor {tuple(u_out.shape)} and in_factor {tuple(u_in.shape)}"
        )
    for name, f in (("out_factor", u_out), ("in_factor", u_in)):
        if f.shape[1] > f.shape[0]:
            raise ValueError(f"{name} must have at most as many columns as rows, got shape {tuple(f.shape)}")
    q_out, r_out = torch.linalg.qr(u_out)
    q_in, r_in = torch.linalg.qr(u_in)
    small = _project(_project(c, r_out.T, 0), r_in.T, 1)
    t = tucker2(small, ranks, n_iter_max=n_iter_max, tol=tol)
    out = q_out @ t.out_factor
    inn = q_in @ t.in_factor
    s_out, s_in = fix_column_signs(out), fix_column_signs(inn)
    core_new = t.core * s_out.reshape(-1, *([1] * (t.core.ndim - 1))) * s_in.reshape(1, -1, *([1] * (t.core.ndim - 2)))
    return Tucker2(core_new.contiguous(), (out * s_out).contiguous(), (inn * s_in).contiguous())


def tucker2_reconstruct(core: Tensor, out_factor: Tensor, in_factor: Tensor) -> Tensor:
    """The dense kernel ``core ×_0 out_factor ×_1 in_factor`` of shape ``(C_out, C_in, *spatial)``.

    Raises:
        ValueError: the shapes do not chain.
    """
    if out_factor.ndim != 2 or in_factor.ndim != 2 or core.ndim < 2:
        raise ValueError("out_factor and in_factor must be matrices and core at least 2-D")
    if core.shape[0] != out_factor.shape[1] or core.shape[1] != in_factor.shape[1]:
        raise ValueError(
            f"core {tuple(core.shape)} does not match out_factor {tuple(out_factor.shape)} "
            f"and in_factor {tuple(in_factor.shape)}"
        )
    return _project(_project(core, out_factor.T, 0), in_factor.T, 1)
