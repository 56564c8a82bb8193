"""Analytic empirical variational Bayesian matrix factorization (EVBMF) rank estimate.

References:
    Nakajima, Tomioka, Sugiyama & Babacan 2013, "Global analytic solution of fully-observed variational
    Bayesian matrix factorization" (JMLR); used for Tucker-2 ranks by Kim et al. 2016.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _tau(x: Tensor, alpha: float) -> Tensor:
    return 0.5 * (x - (1 + alpha) + torch.sqrt(((x - (1 + alpha)) ** 2 - 4 * alpha).clamp_min(0)))


def _neg_free_energy(sigma2: float, L: int, M: int, s: Tensor, residual: float, xubar: float) -> float:
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1, z2 = x[x > xubar], x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    obj = (z2 - torch.log(z2.clamp_min(1e-300))).sum() + (z1 - tau_z1).sum()
    obj = obj + torch.log((tau_z1 + 1) / z1).sum() + alpha * torch.log(tau_z1 / alpha + 1).sum()
    return float(obj + residual / (M * sigma2) + (L - H) * math.log(sigma2))


def evbmf_rank(singular_values: Tensor, shape: tuple[int, int]) -> int:
    """Rank that EVBMF keeps for a matrix of ``shape`` with these singular values (noise variance estimated).

    Args:
        singular_values: all singular values of the matrix, non-increasing.
        shape: the matrix shape ``(m, n)``.

    Returns:
        The number of singular values above the EVBMF threshold (0 when the matrix looks like pure noise).
    """
    s = singular_values.detach().double().cpu()
    L, M = sorted(int(d) for d in shape)
    H = len(s)
    if H == 0 or float(s[0]) == 0.0:
        return 0
    if L < 2:
        return 1  # a vector: nothing to estimate the noise from
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    total = float((s**2).sum())
    residual = 0.0  # all singular values are given
    eh_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (total + residual) / (L * M)
    tail = s[eh_ub + 1 :] if eh_ub + 1 < H else s[-1:]
    lower = max(float(tail[0]) ** 2 / (M * xubar), float((tail**2).mean()) / M)
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        # golden-section search over log(sigma2) on [lower, upper] (the objective is unimodal there in practice,
        # refined from the best point of a coarse grid to be safe)
        grid = torch.logspace(math.log10(lower), math.log10(upper), 64, dtype=torch.float64)
        values = [_neg_free_energy(float(g), L, M, s, residual, xubar) for g in grid]
        i = min(range(len(values)), key=values.__getitem__)
        a = math.log(float(grid[max(i - 1, 0)]))
        b = math.log(float(grid[min(i + 1, len(grid) - 1)]))
        f = lambda t: _neg_free_energy(math.exp(t), L, M, s, residual, xubar)  # noqa: E731
        g = (math.sqrt(5) - 1) / 2
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = f(c), f(d)
        for _ in range(60):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - g * (b - a)
                fc = f(c)
            else:
                a, c, fc = c, d, fd
                d = a + g * (b - a)
                fd = f(d)
        sigma2 = math.exp((a + b) / 2)
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int((s > threshold).sum())
