import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from factorch.decompose import TTMatrix, factorize_dim, tt_matrix, tt_matrix_to_dense, tt_max_ranks


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel_err(tt: TTMatrix, a: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(tt_matrix_to_dense(tt) - a) / torch.linalg.matrix_norm(a))


dims = st.lists(st.integers(1, 4), min_size=1, max_size=3)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_full_ranks_reproduce_the_matrix(data, seed):
    rows = data.draw(dims)
    cols = data.draw(st.lists(st.integers(1, 4), min_size=len(rows), max_size=len(rows)))
    a = _randn(math.prod(rows), math.prod(cols), seed=seed)
    tt = tt_matrix(a, rows, cols, max(tt_max_ranks(rows, cols), default=1))
    assert tt.row_dims == tuple(rows) and tt.col_dims == tuple(cols)
    assert len(tt.cores) == len(rows)
    assert tt.cores[0].shape[0] == 1 and tt.cores[-1].shape[3] == 1
    assert _rel_err(tt, a) < 1e-10


def test_core_shapes_and_clipped_ranks():
    a = _randn(4 * 6 * 2, 3 * 5 * 2)
    assert tt_max_ranks((4, 6, 2), (3, 5, 2)) == (12, 4)
    tt = tt_matrix(a, (4, 6, 2), (3, 5, 2), 100)
    assert tt.ranks == (12, 4)
    assert [tuple(c.shape) for c in tt.cores] == [(1, 4, 3, 12), (12, 6, 5, 4), (4, 2, 2, 1)]
    assert _rel_err(tt, a) < 1e-10
    tt = tt_matrix(a, (4, 6, 2), (3, 5, 2), [5, 50])
    assert tt.ranks == (5, 4) and all(c.dtype == torch.float64 for c in tt.cores)


def test_error_never_increases_with_rank():
    rows, cols = (3, 4, 2), (2, 3, 4)
    a = _randn(24, 24, seed=5)
    a = a + 3.0 * torch.outer(_randn(24, seed=6), _randn(24, seed=7))  # some dominant structure
    errors = [_rel_err(tt_matrix(a, rows, cols, r), a) for r in range(1, max(tt_max_ranks(rows, cols)) + 1)]
    assert all(b <= e + 1e-12 for e, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-10


def test_two_cores_with_one_row_dim_is_the_truncated_svd():
    # rows (1, M) and cols (N, 1): the only split is the matrix itself, so TT-SVD is the matrix SVD
    a = _randn(6, 5, seed=2)
    s = torch.linalg.svdvals(a)
    for r in range(1, 6):
        err = float(torch.linalg.matrix_norm(tt_matrix_to_dense(tt_matrix(a.T, (5, 1), (1, 6), r)) - a.T))
        assert err == pytest.approx(float(s[r:].pow(2).sum().sqrt()), abs=1e-10)


def test_ranks_are_exactly_the_clipped_request():
    # sizes (4, 2, 4): asking (1, 4) leaves only 1 * 2 rows at the second split; the core is zero-padded
    a = _randn(2 * 2 * 2, 2 * 1 * 2, seed=8)
    tt = tt_matrix(a, (2, 2, 2), (2, 1, 2), [1, 4])
    assert tt.ranks == (1, 4)
    assert [tuple(c.shape) for c in tt.cores] == [(1, 2, 2, 1), (1, 2, 1, 4), (4, 2, 2, 1)]
    assert bool((tt.cores[1][..., 2:] == 0).all())
    torch.testing.assert_close(tt_matrix_to_dense(tt), tt_matrix_to_dense(tt_matrix(a, (2, 2, 2), (2, 1, 2), [1, 2])))


def test_single_core():
    a = _randn(3, 4)
    tt = tt_matrix(a, (3,), (4,), 7)
    assert tt.ranks == () and tt.cores[0].shape == (1, 3, 4, 1)
    torch.testing.assert_close(tt_matrix_to_dense(tt.cores), a)


def test_deterministic():
    a = _randn(16, 9, seed=4)
    x, y = tt_matrix(a, (4, 4), (3, 3), 3), tt_matrix(a.clone(), (4, 4), (3, 3), 3)
    assert all(torch.equal(p, q) for p, q in zip(x.cores, y.cores, strict=True))


def test_validation():
    a = _randn(12, 6)
    with pytest.raises(ValueError, match="prod"):
        tt_matrix(a, (3, 3), (2, 3), 2)
    with pytest.raises(ValueError, match="same length"):
        tt_matrix(a, (3, 4), (6,), 2)
    with pytest.raises(ValueError, match=r"d - 1 = 1"):
        tt_matrix(a, (3, 4), (2, 3), [2, 2])
    with pytest.raises(ValueError, match=r"ranks\[0\] must be >= 1"):
        tt_matrix(a, (3, 4), (2, 3), [0])
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        tt_matrix(a, (3, 4), (2, 3), 0)
    with pytest.raises(ValueError, match=r"row_dims\[1\] must be >= 1"):
        tt_max_ranks((3, 0), (2, 3))
    with pytest.raises(ValueError, match="rank mismatch"):
        tt_matrix_to_dense([_randn(1, 2, 2, 3), _randn(2, 2, 2, 1)])


@pytest.mark.parametrize(
    "n,d,expected",
    [
        (784, 3, (7, 8, 14)),
        (1000, 3, (10, 10, 10)),
        (4096, 4, (8, 8, 8, 8)),
        (120, 2, (10, 12)),
        (100, 1, (100,)),
        (1, 3, (1, 1, 1)),
        (787, 3, (8, 9, 11)),  # 787 is prime: padded to 792
        (97, 2, (7, 14)),  # prime: padded to 98
    ],
)
def test_factorize_dim_examples(n, d, expected):
    assert factorize_dim(n, d) == expected


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5000), d=st.integers(1, 4))
def test_factorize_dim_properties(n, d):
    fs = factorize_dim(n, d)
    assert len(fs) == d and list(fs) == sorted(fs) and math.prod(fs) >= n
    assert fs[-1] <= 4.0 * fs[0]
    exact = factorize_dim(n, d, allow_padding=False)
    assert math.prod(exact) == n and len(exact) == d
    if exact[-1] <= 4.0 * exact[0]:
        assert fs == exact  # no padding when an exact split is balanced enough


def test_factorize_dim_validation():
    with pytest.raises(ValueError, match="n must be >= 1"):
        factorize_dim(0, 2)
    with pytest.raises(ValueError, match="d must be >= 1"):
        factorize_dim(10, 0)
    with pytest.raises(ValueError, match="max_ratio"):
        factorize_dim(10, 2, max_ratio=0.5)
