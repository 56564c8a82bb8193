import time

import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import partial_tucker

from factorch.decompose import Tucker2, tucker2, tucker2_reconstruct


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel_err(t: Tucker2, w: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tucker2_reconstruct(*t) - w) / torch.linalg.vector_norm(w))


def _low_rank_kernel(c_out: int, c_in: int, r_out: int, r_in: int, spatial: tuple[int, ...], noise: float):
    core = _randn(r_out, r_in, *spatial, seed=1)
    u = torch.linalg.qr(_randn(c_out, r_out, seed=2))[0]
    v = torch.linalg.qr(_randn(c_in, r_in, seed=3))[0]
    return tucker2_reconstruct(core, u, v) + noise * _randn(c_out, c_in, *spatial, seed=4)


@settings(max_examples=50, deadline=None)
@given(
    c_out=st.integers(1, 8),
    c_in=st.integers(1, 8),
    spatial=st.one_of(st.tuples(st.integers(1, 3), st.integers(1, 3)), st.tuples(st.integers(1, 3)), st.just(())),
    seed=st.integers(0, 2**16),
)
def test_full_ranks_reproduce_the_kernel(c_out, c_in, spatial, seed):
    w = _randn(c_out, c_in, *spatial, seed=seed)
    t = tucker2(w, (c_out, c_in))
    assert t.core.shape == w.shape and t.out_factor.shape == (c_out, c_out) and t.in_factor.shape == (c_in, c_in)
    assert _rel_err(t, w) < 1e-12


def test_shapes_orthonormal_factors_and_core_is_the_projection():
    w = _randn(8, 6, 3, 3)
    core, u, v = tucker2(w, (3, 2))
    assert core.shape == (3, 2, 3, 3) and u.shape == (8, 3) and v.shape == (6, 2)
    torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(v.T @ v, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(core, torch.einsum("ocij,or,cs->rsij", w, u, v))
    assert core.dtype == torch.float64 and u.dtype == torch.float64


def test_recovers_an_exact_tucker2_kernel_and_works_in_1d():
    w = _low_rank_kernel(10, 7, 3, 2, (3, 3), noise=0.0)
    assert _rel_err(tucker2(w, (3, 2)), w) < 1e-12
    w1 = _low_rank_kernel(9, 6, 4, 3, (5,), noise=0.0)
    assert _rel_err(tucker2(w1, (4, 3)), w1) < 1e-12


def test_error_never_increases_with_rank():
    w = _low_rank_kernel(8, 7, 4, 4, (3, 3), noise=0.3)
    joint = [_rel_err(tucker2(w, (r, min(r, 7))), w) for r in range(1, 9)]
    assert all(b <= a + 1e-12 for a, b in zip(joint, joint[1:], strict=False)), joint
    assert joint[-1] < 1e-12
    for r_in in range(1, 8):
        per_out = [_rel_err(tucker2(w, (r, r_in)), w) for r in range(1, 9)]
        assert all(b <= a + 1e-12 for a, b in zip(per_out, per_out[1:], strict=False)), per_out


def test_hooi_is_never_worse_than_hosvd():
    w = _randn(9, 8, 3, 3, seed=7)
    for ranks in [(2, 3), (4, 4), (6, 2)]:
        assert _rel_err(tucker2(w, ranks), w) <= _rel_err(tucker2(w, ranks, n_iter_max=0), w) + 1e-12


@pytest.mark.parametrize("shape,ranks", [((12, 10, 3, 3), (4, 3)), ((16, 8, 3), (5, 4)), ((6, 9, 2, 2), (6, 2))])
def test_matches_tensorly_partial_tucker(shape, ranks):
    w = _low_rank_kernel(shape[0], shape[1], ranks[0], ranks[1], shape[2:], noise=0.5)
    start = time.perf_counter()
    ours = _rel_err(tucker2(w, ranks, tol=1e-12), w)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    with tl.backend_context("pytorch"):
        (core, factors), _ = partial_tucker(w, ranks, modes=[0, 1], n_iter_max=100, tol=1e-12, init="svd")
    t_tl = time.perf_counter() - start
    theirs = _rel_err(Tucker2(core, factors[0], factors[1]), w)
    assert ours == pytest.approx(theirs, rel=1e-6)
    print(f"{shape} {ranks}: ours {t_ours * 1e3:.1f} ms, tensorly {t_tl * 1e3:.1f} ms")


def test_random_init_is_seeded_and_converges_like_svd_init():
    w = _low_rank_kernel(8, 8, 3, 3, (3, 3), noise=0.05)
    a = tucker2(w, (3, 3), init="random", seed=3)
    b = tucker2(w, (3, 3), init="random", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert _rel_err(a, w) == pytest.approx(_rel_err(tucker2(w, (3, 3)), w), rel=1e-8)


def test_deterministic():
    w = _randn(7, 5, 3, 3, seed=11)
    a, b = tucker2(w, (3, 2)), tucker2(w.clone(), (3, 2))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_validation():
    w = _randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"ranks\[0\] \(R_out\) must be in \[1, 4\]"):
        tucker2(w, (5, 2))
    with pytest.raises(ValueError, match=r"ranks\[1\] \(R_in\) must be in \[1, 3\]"):
        tucker2(w, (2, 0))
    with pytest.raises(ValueError, match="pair"):
        tucker2(w, 2)
    with pytest.raises(ValueError, match="init"):
        tucker2(w, (2, 2), init="cp")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        tucker2(_randn(4), (1, 1))
    with pytest.raises(ValueError, match="n_iter_max"):
        tucker2(w, (2, 2), n_iter_max=-1)
    with pytest.raises(ValueError, match="do not match|does not match"):
        tucker2_reconstruct(_randn(2, 2, 3, 3), _randn(4, 3), _randn(3, 2))
