import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from factorch.decompose import (
    SVD,
    SpatialSVD,
    spatial_svd,
    spatial_svd_max_rank,
    spatial_svd_reconstruct,
    truncated_svd,
)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_truncated_svd_shapes_orthonormality_and_eckart_young():
    a = _randn(7, 5)
    full = torch.linalg.svdvals(a)
    for r in range(1, 6):
        u, s, vh = truncated_svd(a, r)
        assert (u.shape, s.shape, vh.shape) == ((7, r), (r,), (r, 5))
        torch.testing.assert_close(u.T @ u, torch.eye(r, dtype=torch.float64))
        torch.testing.assert_close(vh @ vh.T, torch.eye(r, dtype=torch.float64))
        err = torch.linalg.matrix_norm(a - u @ torch.diag(s) @ vh)
        torch.testing.assert_close(err, full[r:].pow(2).sum().sqrt(), atol=1e-12, rtol=1e-10)
    u, s, vh = truncated_svd(a, 5)
    assert torch.linalg.matrix_norm(a - (u * s) @ vh) / torch.linalg.matrix_norm(a) < 1e-13


def test_truncated_svd_returns_named_float64_and_fixed_signs():
    a = _randn(6, 4, dtype=torch.float32)
    out = truncated_svd(a, 3)
    assert isinstance(out, SVD) and out.u.dtype == torch.float64
    largest = out.u.gather(0, out.u.abs().argmax(0, keepdim=True))
    assert bool((largest > 0).all())
    again = truncated_svd(a.clone(), 3)
    assert torch.equal(out.u, again.u) and torch.equal(out.vh, again.vh)
    negated = truncated_svd(-a, 3)  # same convention: u keeps its signs, vh flips
    torch.testing.assert_close(negated.u, out.u)
    torch.testing.assert_close(negated.vh, -out.vh)


@pytest.mark.parametrize("rank", [0, -1, 5])
def test_truncated_svd_rejects_rank_out_of_range(rank):
    with pytest.raises(ValueError, match=r"rank must be in \[1, 4\]"):
        truncated_svd(_randn(4, 6), rank)


def test_truncated_svd_rejects_bad_inputs():
    with pytest.raises(TypeError, match="rank"):
        truncated_svd(_randn(4, 6), 2.0)
    with pytest.raises(ValueError, match="2 dimensions"):
        truncated_svd(_randn(4, 6, 2), 1)
    bad = _randn(3, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        truncated_svd(bad, 1)
    with pytest.raises(TypeError, match="real"):
        truncated_svd(torch.ones(2, 2, dtype=torch.complex64), 1)


def _conv_pair(x, sv: SpatialSVD, padding, stride):
    y = F.conv2d(x, sv.vertical, padding=(padding[0], 0), stride=(stride[0], 1))
    return F.conv2d(y, sv.horizontal, padding=(0, padding[1]), stride=(1, stride[1]))


@settings(max_examples=50, deadline=None)
@given(
    c_out=st.integers(1, 8),
    c_in=st.integers(1, 8),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_spatial_svd_full_rank_reproduces_the_conv(c_out, c_in, kh, kw, seed):
    w = _randn(c_out, c_in, kh, kw, seed=seed)
    r = spatial_svd_max_rank(w.shape)
    sv = spatial_svd(w, r)
    assert sv.vertical.shape == (r, c_in, kh, 1) and sv.horizontal.shape == (c_out, r, 1, kw)
    rel = torch.linalg.vector_norm(spatial_svd_reconstruct(*sv) - w) / torch.linalg.vector_norm(w)
    assert rel < 1e-12
    x = _randn(2, c_in, 6, 7, seed=seed + 1)
    padding, stride = (kh // 2, kw // 2), (2, 1)
    torch.testing.assert_close(
        _conv_pair(x, sv, padding, stride), F.conv2d(x, w, padding=padding, stride=stride), rtol=1e-10, atol=1e-10
    )


def test_spatial_svd_low_rank_is_the_truncated_svd_of_the_reshaped_kernel():
    w = _randn(5, 4, 3, 3)
    m = w.permute(1, 2, 0, 3).reshape(12, 15)
    s = torch.linalg.svdvals(m)
    errors = []
    for r in range(1, 13):
        approx = spatial_svd_reconstruct(*spatial_svd(w, r))
        errors.append(float(torch.linalg.vector_norm(approx - w)))
        assert errors[-1] == pytest.approx(float(s[r:].pow(2).sum().sqrt()), abs=1e-10)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:], strict=False))


def test_spatial_svd_validation():
    assert spatial_svd_max_rank((16, 3, 3, 5)) == min(3 * 3, 16 * 5)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 6\]"):
        spatial_svd(_randn(2, 3, 2, 3), 7)
    with pytest.raises(ValueError, match="4 dimensions"):
        spatial_svd(_randn(2, 3, 3), 1)
    with pytest.raises(ValueError, match="shape"):
        spatial_svd_max_rank((2, 3, 3))
    with pytest.raises(ValueError, match="rank mismatch"):
        spatial_svd_reconstruct(_randn(2, 3, 3, 1), _randn(4, 3, 1, 3))
