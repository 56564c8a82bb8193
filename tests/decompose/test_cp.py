import math

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac

from factorch.decompose import (
    CP,
    cp,
    cp_balance,
    cp_max_rank,
    cp_reconstruct,
    cp_sensitivity,
    cp_term_norms,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel_err(model: CP, x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(cp_reconstruct(*model) - x) / torch.linalg.vector_norm(x))


def _max_term_ratio(model: CP, x: torch.Tensor) -> float:
    """Largest rank-one-term norm over the tensor's norm (>> 1 means diverging, cancelling terms)."""
    return float(cp_term_norms(*model).max() / torch.linalg.vector_norm(x))


def _rotation_tensor() -> torch.Tensor:
    """2x2x2 tensor with slices I and a 90-degree rotation: real rank 3, no best real rank-2 approximation
    (de Silva & Lim 2008); rank-2 fits approach the infimum error only with diverging terms."""
    x = torch.zeros(2, 2, 2, dtype=torch.float64)
    x[:, :, 0] = torch.eye(2, dtype=torch.float64)
    x[:, :, 1] = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    return x


def _w_tensor() -> torch.Tensor:
    """a⊗a⊗b + a⊗b⊗a + b⊗a⊗a: rank 3, border rank 2 (rank-2 fits reach any error only with large terms)."""
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)

    def outer(u, v, w):
        return torch.einsum("i,j,k->ijk", u, v, w)

    return outer(a, a, b) + outer(a, b, a) + outer(b, a, a)


# ---------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("shape", [(4, 5, 6), (3, 4, 5, 2), (6, 5, 9)])
def test_recovers_a_tensor_of_known_rank(shape):
    factors = [_randn(n, 3, seed=k) for k, n in enumerate(shape)]
    x = cp_reconstruct(None, factors)
    model = cp(x, 3)
    assert _rel_err(model, x) < 1e-8
    assert len(model.factors) == len(shape) and model.weights.shape == (3,)
    # the recovered terms are the true ones (CP is essentially unique here)
    true_norms = torch.sort(cp_term_norms(None, factors), descending=True).values
    torch.testing.assert_close(model.weights, true_norms, rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_recovers_known_rank_without_stabilisation_and_from_random_init(seed):
    factors = [_randn(n, 3, seed=1000 * seed + k) for k, n in enumerate((5, 4, 6))]
    x = cp_reconstruct(None, factors)
    assert _rel_err(cp(x, 3, stabilize=False), x) < 1e-8
    assert _rel_err(cp(x, 3, init="random", seed=seed), x) < 1e-8


def test_output_is_normalised_sorted_and_float64():
    x = _randn(6, 5, 9, seed=1).to(torch.float32)
    model = cp(x, 4)
    assert model.weights.dtype == torch.float64 and all(f.dtype == torch.float64 for f in model.factors)
    for f in model.factors:
        torch.testing.assert_close(torch.linalg.vector_norm(f, dim=0), torch.ones(4, dtype=torch.float64))
    assert bool((model.weights[:-1] >= model.weights[1:]).all())
    for f in model.factors[:-1]:
        assert bool((f.gather(0, f.abs().argmax(0, keepdim=True)) > 0).all())


def test_seed_determinism():
    x = _randn(5, 4, 3, 3, seed=3)
    a = cp(x, 6, init="random", seed=7, n_iter_max=100)
    b = cp(x.clone(), 6, init="random", seed=7, n_iter_max=100)
    assert torch.equal(a.weights, b.weights)
    assert all(torch.equal(f, g) for f, g in zip(a.factors, b.factors, strict=True))
    c = cp(x, 6, init="random", seed=8, n_iter_max=100)
    assert not torch.equal(a.weights, c.weights)
    # the SVD init draws random columns only where the rank exceeds a dimension (here the 3x3 modes)
    d, e = cp(x, 6, seed=1, n_iter_max=100), cp(x, 6, seed=1, n_iter_max=100)
    assert all(torch.equal(f, g) for f, g in zip(d.factors, e.factors, strict=True))


def test_init_from_a_cp_model():
    factors = [_randn(n, 2, seed=20 + k) for k, n in enumerate((4, 3, 5))]
    x = cp_reconstruct(None, factors)
    start = CP(torch.ones(2, dtype=torch.float64), tuple(f + 0.01 * _randn(*f.shape, seed=9) for f in factors))
    assert _rel_err(cp(x, 2, init=start), x) < 1e-8
    with pytest.raises(ValueError, match=r"init.factors\[0\]"):
        cp(x, 3, init=start)


# ------------------------------------------------------------------------------------------ stabilisation


def test_stabilised_cp_bounds_diverging_terms_of_a_tensor_without_best_rank_2_approximation():
    x = _rotation_tensor()
    plain = cp(x, 2, init="random", seed=0, stabilize=False, n_iter_max=1000)
    stable = cp(x, 2, init="random", seed=0, n_iter_max=1000)
    with tl.backend_context("pytorch"):
        w, f = parafac(x, 2, init="random", random_state=0, n_iter_max=1000, tol=1e-12, l2_reg=0)
    tensorly_plain = CP(w, tuple(f))
    # plain ALS (ours and tensorly's): terms an order of magnitude or more above the tensor, cancelling
    assert _max_term_ratio(plain, x) > 10  # measured 94
    assert _max_term_ratio(tensorly_plain, x) > 10  # measured 16
    # stabilised: bounded terms at (at most 1 % above) the plain ALS error
    assert _max_term_ratio(stable, x) < 3  # measured 2.5
    assert _rel_err(stable, x) <= 1.01 * _rel_err(plain, x) + 1e-12
    assert _rel_err(plain, x) == pytest.approx(0.5, abs=1e-3)  # the infimum of the rank-2 error
    assert cp_sensitivity(cp_balance(*stable)) < cp_sensitivity(cp_balance(*plain)) / 100


def test_stabilised_cp_on_a_conv_kernel_with_degenerate_als():
    # a 4-way kernel (C_out, C_in, kh, kw) at a rank where plain ALS diverges (seed found by a scan)
    x = _randn(8, 4, 3, 3, seed=3)
    plain = cp(x, 10, init="random", seed=3, stabilize=False)
    stable = cp(x, 10, init="random", seed=3)
    assert _max_term_ratio(plain, x) > 10  # measured 36
    assert _max_term_ratio(stable, x) < 3  # measured 2.35
    assert _rel_err(stable, x) <= 1.01 * _rel_err(plain, x) + 1e-12  # 0.4016 vs 0.3976


def test_stabilised_cp_on_a_3way_kernel_with_degenerate_als():
    # the MobileNet-like 3-factor form (C_out, C_in, kh * kw)
    x = _randn(8, 8, 9, seed=1)
    plain = cp(x, 12, init="random", seed=1, stabilize=False)
    stable = cp(x, 12, init="random", seed=1)
    assert _max_term_ratio(plain, x) > 10  # measured 20
    assert _max_term_ratio(stable, x) < 3  # measured 0.7
    assert _rel_err(stable, x) <= 1.01 * _rel_err(plain, x) + 1e-12  # 0.4941 vs 0.4892


def test_border_rank_tensor_terms_grow_under_plain_als_and_error_bound_caps_them():
    x = _w_tensor()
    short = cp(x, 2, init="random", seed=0, stabilize=False, n_iter_max=100)
    long = cp(x, 2, init="random", seed=0, stabilize=False, n_iter_max=1000)
    # the error can only fall by letting the terms grow: no finite rank-2 model reaches it
    assert _rel_err(long, x) < _rel_err(short, x)
    assert _max_term_ratio(long, x) > 1.3 * _max_term_ratio(short, x)
    bounded = cp(x, 2, init="random", seed=0, n_iter_max=1000, error_bound=0.02)
    assert _rel_err(bounded, x) <= 0.02 + 1e-12
    assert _max_term_ratio(bounded, x) < 2  # measured 1.6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("slack", [0.0, 0.01])
def test_correction_respects_the_error_budget_and_lowers_sensitivity(seed, slack):
    x = _randn(5, 4, 6, seed=100 + seed)
    plain = cp(x, 6, seed=seed, stabilize=False)
    stable = cp(x, 6, seed=seed, error_slack=slack)
    assert _rel_err(stable, x) <= (1 + slack) * _rel_err(plain, x) * (1 + 1e-9)
    assert cp_sensitivity(cp_balance(*stable)) <= cp_sensitivity(cp_balance(*plain)) * (1 + 1e-9)


# --------------------------------------------------------------------------------------------- helpers


def test_cp_reconstruct_matches_einsum():
    w = _randn(3, seed=1)
    a, b, c, d = _randn(4, 3, seed=2), _randn(2, 3, seed=3), _randn(3, 3, seed=4), _randn(5, 3, seed=5)
    torch.testing.assert_close(cp_reconstruct(w, [a, b, c, d]), torch.einsum("r,ir,jr,kr,lr->ijkl", w, a, b, c, d))
    torch.testing.assert_close(cp_reconstruct(None, [a, b]), a @ b.T)


def test_sensitivity_is_the_squared_jacobian_norm():
    factors = [_randn(n, 3, seed=k) for k, n in enumerate((4, 3, 2))]
    jac = torch.autograd.functional.jacobian(lambda *fs: cp_reconstruct(None, list(fs)), tuple(factors))
    squared = sum(float(j.pow(2).sum()) for j in jac)
    assert float(cp_sensitivity(factors)) == pytest.approx(squared, rel=1e-12)


def test_balance_keeps_the_model_and_minimises_sensitivity():
    weights = torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64)
    factors = [_randn(n, 3, seed=30 + k) for k, n in enumerate((6, 2, 9))]
    balanced = cp_balance(weights, factors)
    torch.testing.assert_close(cp_reconstruct(None, balanced), cp_reconstruct(weights, factors))
    torch.testing.assert_close(cp_term_norms(None, balanced), cp_term_norms(weights, factors))
    best = float(cp_sensitivity(balanced))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # any other split of the same terms across modes is no better
        s = torch.exp(torch.randn(2, 3, generator=gen, dtype=torch.float64))
        scaled = [balanced[0] * s[0], balanced[1] * s[1], balanced[2] / (s[0] * s[1])]
        assert float(cp_sensitivity(scaled)) >= best * (1 - 1e-12)


def test_validation():
    x = _randn(3, 4, 5)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 12\]"):
        cp(x, 0)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 12\]"):
        cp(x, -2)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 12\]"):
        cp(x, 13)
    with pytest.raises(TypeError, match="rank"):
        cp(x, 2.5)
    with pytest.raises(ValueError, match="init"):
        cp(x, 2, init="hosvd")
    with pytest.raises(ValueError, match="error_slack"):
        cp(x, 2, error_slack=-0.1)
    with pytest.raises(ValueError, match="seed"):
        cp(x, 2, seed=-1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cp(_randn(5), 1)
    assert cp_max_rank((64, 32, 3, 3)) == 32 * 9 and cp_max_rank((5, 5)) == 5
    with pytest.raises(ValueError, match="same number of columns"):
        cp_reconstruct(None, [_randn(3, 2), _randn(4, 3)])
    assert math.isfinite(float(cp_sensitivity([_randn(3, 2)])))
