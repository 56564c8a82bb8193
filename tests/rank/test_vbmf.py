"""EVBMF rank: known ranks recovered from noisy matrices, and the threshold computed independently from the paper.

References:
    Nakajima, Tomioka, Sugiyama & Babacan 2013, "Global analytic solution of fully-observed variational
    Bayesian matrix factorization" (JMLR): for an ``L x M`` matrix (``L <= M``, ``alpha = L / M``) with noise
    variance ``sigma2``, EVBMF keeps the singular values above ``sqrt(M * sigma2 * (1 + tau) * (1 + alpha / tau))``,
    where ``tau`` is the zero of ``phi(t) + phi(t / alpha)``, ``phi(z) = log(1 + z) / z - 1 / 2``
    (``tau = 2.5129`` for a square matrix), and ``sigma2`` minimises the free energy of the paper's Theorem 5
    on ``[sigma2_lower, sigma2_upper]``.
"""

import math

import numpy as np
import pytest
import torch

from factorch.rank.vbmf import evbmf_rank


def tau_lower(alpha: float) -> float:
    """The zero of ``phi(t) + phi(t / alpha)`` by bisection (the function decreases in ``t``)."""

    def phi(z: float) -> float:
        return math.log1p(z) / z - 0.5

    lo, hi = 1e-3, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if phi(mid) + phi(mid / alpha) > 0 else (lo, mid)
    return (lo + hi) / 2


def x_lower(alpha: float) -> float:
    tau = tau_lower(alpha)
    return (1 + tau) * (1 + alpha / tau)


def known_noise_threshold(sigma: float, shape: tuple[int, int]) -> float:
    L, M = sorted(shape)
    return sigma * math.sqrt(M * x_lower(L / M))


def free_energy(sigma2: np.ndarray, s: np.ndarray, L: int, M: int) -> np.ndarray:
    """EVBMF free energy (up to constants) per noise variance in ``sigma2``, given all ``L`` singular values."""
    alpha = L / M
    x = s[None, :] ** 2 / (M * sigma2[:, None])
    kept = x > x_lower(alpha)
    tau = 0.5 * (x - (1 + alpha) + np.sqrt(np.clip((x - (1 + alpha)) ** 2 - 4 * alpha, 0, None)))
    with np.errstate(divide="ignore", invalid="ignore"):
        dropped_term = x - np.log(x)
        kept_term = x - tau + np.log((tau + 1) / x) + alpha * np.log(tau / alpha + 1)
    return np.where(kept, kept_term, dropped_term).sum(axis=1)


def independent_threshold(s: list[float], shape: tuple[int, int]) -> float:
    """EVBMF threshold with ``sigma2`` found by a dense grid search of the free energy on the paper's bounds."""
    s_arr = np.asarray(s, dtype=np.float64)
    L, M = sorted(shape)
    assert len(s_arr) == L
    xl = x_lower(L / M)
    h_bar = math.ceil(L / (1 + L / M)) - 1  # upper bound of the EVB rank
    upper = (s_arr**2).sum() / (L * M)
    lower = max(s_arr[h_bar] ** 2 / (M * xl), (s_arr[h_bar:] ** 2).sum() / (M * (L - h_bar)))
    grid = np.geomspace(lower, upper, 50_001)
    sigma2 = grid[int(np.argmin(free_energy(grid, s_arr, L, M)))]
    return math.sqrt(M * sigma2 * xl)


def test_tau_lower_is_the_papers_constant():
    assert tau_lower(1.0) == pytest.approx(2.5129, abs=1e-4)
    assert x_lower(1.0) == pytest.approx(4.9108, abs=1e-3)  # (1 + tau)^2 / tau
    for alpha in (0.25, 0.5, 2 / 3):
        assert tau_lower(alpha) == pytest.approx(2.5129 * math.sqrt(alpha), rel=0.02)


def noisy_low_rank(shape: tuple[int, int], signal: list[float], sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    u, _ = torch.linalg.qr(torch.randn(m, len(signal), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(signal), generator=g, dtype=torch.float64))
    low_rank = u @ torch.diag(torch.tensor(signal, dtype=torch.float64)) @ v.T
    return low_rank + sigma * torch.randn(m, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (48, 48), (80, 32)])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_rank_of_a_noisy_low_rank_matrix_is_recovered(shape, rank, seed):
    sigma = 0.7
    threshold = known_noise_threshold(sigma, shape)
    # signal singular values of 1.2 to 1.5 times the threshold: clearly above the noise, yet below twice it
    signal = list(np.linspace(1.5, 1.2, rank) * threshold)
    s = torch.linalg.svdvals(noisy_low_rank(shape, signal, sigma, seed))
    assert float(s[rank - 1]) > 1.1 * threshold and float(s[rank]) < 0.95 * threshold  # a clear separation
    assert float(s[0]) < 2 * threshold  # a threshold off by a factor of 2 must lose the signal
    assert evbmf_rank(s, shape) == rank
    assert evbmf_rank(s * 1e3, shape) == rank  # scale-free: the noise variance is estimated


@pytest.mark.parametrize("shape", [(20, 30), (24, 24), (64, 8)])
def test_pure_noise_has_rank_zero(shape):
    g = torch.Generator().manual_seed(0)
    s = torch.linalg.svdvals(torch.randn(*shape, generator=g, dtype=torch.float64))
    assert evbmf_rank(s, shape) == 0


def decaying(top: tuple[float, ...], length: int) -> list[float]:
    """``top`` followed by a noise-like tail falling linearly from 3 to 1, ``length`` values in all."""
    return [*top, *np.linspace(3.0, 1.0, length - len(top)).tolist()]


@pytest.mark.parametrize(
    ("singular_values", "shape", "expected"),
    [
        (decaying((9.0,), 10), (10, 10), 1),
        (decaying((12.0, 8.0), 10), (10, 10), 2),
        (decaying((14.0, 9.0, 7.0), 12), (12, 12), 3),
        (decaying((12.0, 8.0), 8), (8, 16), 2),
        (decaying((12.0, 8.0), 8), (16, 8), 2),
        (decaying((14.0, 3.75), 10), (10, 40), 1),  # 3.75 is 4 % below the threshold (alpha = 1/4)
        # three large values in a 10 x 10 matrix: EVBMF explains two of them as noise (sigma2 jumps up)
        (decaying((14.0, 9.0, 7.0), 10), (10, 10), 1),
    ],
)
def test_rank_matches_the_threshold_computed_from_the_paper(singular_values, shape, expected):
    threshold = independent_threshold(singular_values, shape)
    assert sum(v > threshold for v in singular_values) == expected
    # no singular value sits within 4 % of the threshold, so a small error in sigma2 cannot flip the answer,
    # but halving the threshold would (doubling it would too, except in the last case)
    assert all(abs(v / threshold - 1) > 0.04 for v in singular_values)
    assert sum(v > threshold / 2 for v in singular_values) != expected
    assert evbmf_rank(torch.tensor(singular_values, dtype=torch.float64), shape) == expected


def test_degenerate_inputs():
    assert evbmf_rank(torch.zeros(4), (4, 6)) == 0
    assert evbmf_rank(torch.tensor([]), (0, 6)) == 0
    assert evbmf_rank(torch.tensor([3.0]), (1, 6)) == 1  # a vector: no noise to estimate
