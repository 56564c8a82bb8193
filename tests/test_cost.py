"""Cost: every budget unit, pinned on hand-computed cases."""

import pytest

from factorch.cost import Cost


def test_a_dense_cost_stores_every_value_at_its_width():
    c = Cost.dense(params=1000, macs=5000, weight_bits=16)
    assert (c.nonzero_params, c.size_bits, c.size_bytes) == (1000, 16000, 2000)
    assert (c.of("macs"), c.of("params"), c.of("size")) == (5000, 1000, 2000)


def test_a_sparse_cost_counts_non_zeros_plus_the_mask():
    c = Cost(params=1000, nonzero_params=100, weight_bits=32, macs=5000, mask_bits=1000)
    assert c.size_bits == 100 * 32 + 1000 and c.size_bytes == 525
    assert c.of("params") == 100  # params budgets count non-zeros
    c2 = Cost(params=10, nonzero_params=3, weight_bits=32, mask_bits=9)
    assert c2.size_bytes == 14  # ceil(105 / 8)


def test_costs_add_up_with_a_weighted_bit_width():
    a = Cost(params=100, nonzero_params=100, weight_bits=32, macs=10, mask_bits=0)
    b = Cost(params=200, nonzero_params=50, weight_bits=8, macs=20, mask_bits=200, latency_s=0.5)
    s = a + b
    assert (s.params, s.nonzero_params, s.macs, s.mask_bits) == (300, 150, 30, 200)
    assert s.weight_bits == pytest.approx((100 * 32 + 50 * 8) / 150)
    assert s.size_bits == a.size_bits + b.size_bits
    assert s.latency_s is None  # unknown when one side was not measured
    assert (b + b).latency_s == 1.0


def test_unknown_kinds_and_unmeasured_latency_are_errors():
    with pytest.raises(ValueError, match="no measured latency"):
        Cost.dense(1, 1).of("latency")
    with pytest.raises(ValueError, match="choose from macs, params, size, latency"):
        Cost.dense(1, 1).of("flops")
    assert Cost.dense(4, 8).scaled_macs(3).macs == 24


def test_op_bits_add_up_weighted_by_macs():
    a = Cost(params=10, nonzero_params=10, macs=100, op_bits=8)
    b = Cost(params=10, nonzero_params=10, macs=300, op_bits=32)
    assert (a + b).op_bits == 26  # (100 * 8 + 300 * 32) / 400
    assert Cost.dense(10, 0).op_bits == 32 and (a + b).to_dict()["op_bits"] == 26
