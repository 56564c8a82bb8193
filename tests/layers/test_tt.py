import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from factorch.layers import NotFactorizable, TTEmbedding, TTLinear


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 40),
    st.integers(2, 40),
    st.integers(2, 3),
    st.booleans(),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_tt_linear_full_rank_is_exact(n_in, n_out, n_cores, bias, dtype):
    torch.manual_seed(n_in * 100 + n_out)
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    layer = TTLinear.from_dense(lin, 1.0, n_cores=n_cores)
    x = torch.randn(4, 3, n_in, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        assert rel_err(layer(x), lin(x)) < tol
        assert rel_err(layer.to_dense()(x), lin(x)) < tol


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 60), st.integers(2, 24), st.sampled_from([None, 0, 1]))
def test_tt_embedding_full_rank_is_exact(vocab, dim, padding_idx):
    emb = nn.Embedding(vocab, dim, padding_idx=padding_idx, dtype=torch.float64)
    layer = TTEmbedding.from_dense(emb, 1.0, n_cores=2)
    idx = torch.randint(0, vocab, (5, 7))
    with torch.no_grad():
        assert rel_err(layer(idx), emb(idx)) < 1e-10


def test_tt_given_dims_and_error_decreases_with_rank():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, dtype=torch.float64)
    x = torch.randn(8, 64, dtype=torch.float64)
    errors = []
    for r in (1, 2, 4, 8, 16, 64):
        layer = TTLinear.from_dense(lin, r, row_dims=(4, 4, 3), col_dims=(4, 4, 4))
        assert layer.row_dims == (4, 4, 3)
        with torch.no_grad():
            errors.append(rel_err(layer(x), lin(x)))
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-10


def test_tt_bad_dims_and_types():
    with pytest.raises(ValueError, match="multiply to at least 48"):
        TTLinear.from_dense(nn.Linear(64, 48), 2, row_dims=(4, 4), col_dims=(8, 8))
    with pytest.raises(NotFactorizable):
        TTLinear.from_dense(nn.Conv2d(2, 2, 3), 2)
