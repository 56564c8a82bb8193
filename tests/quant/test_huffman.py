"""Canonical Huffman coding, and save(pack=True): Deep Compression's stored format, restored bit for bit."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import factorch
from factorch.huffman import (
    _gap_symbols,
    code_lengths,
    coded_bits,
    decode,
    decode_positions,
    encode,
    encode_positions,
    from_bytes,
    to_bytes,
)
from factorch.models._io import CheckpointError


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-50, 300), min_size=0, max_size=400))
def test_decode_inverts_encode_and_the_stream_is_the_counted_size(values):
    values = np.array(values, dtype=np.int64)
    stream = encode(values)
    assert np.array_equal(decode(stream), values)
    assert stream.bits.size == math.ceil(coded_bits(values) / 8)


def test_code_lengths_are_optimal_and_prefix_free_on_a_known_case():
    # frequencies 45, 13, 12, 16, 9, 5 (the textbook example): lengths 1, 3, 3, 3, 4, 4 -> 224 bits
    lengths = code_lengths(np.array([45, 13, 12, 16, 9, 5]))
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert sum(2.0 ** -int(n) for n in lengths) <= 1.0  # Kraft: a prefix code exists
    deep = code_lengths(np.array([2**k for k in range(30)]))  # a Fibonacci-like skew: capped at 16 bits
    assert deep.max() <= 16 and sum(2.0 ** -int(n) for n in deep) <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_positions_round_trip(flags):
    mask = np.array(flags)
    stream, cap = encode_positions(mask)
    assert np.array_equal(decode_positions(stream, mask.size, cap), mask)
    for fixed in (1, 2, 16):  # any cap decodes, the chosen one is the smallest
        symbols = _gap_symbols(np.diff(np.flatnonzero(mask), prepend=-1), fixed)
        assert np.array_equal(decode_positions(encode(symbols), mask.size, fixed), mask)
        assert cost(symbols) >= cost(decode(stream))


def cost(symbols):
    """Bits of a gap stream and its code table, as encode_positions weighs caps."""
    return coded_bits(symbols) + 24 * np.unique(symbols).size


def test_gaps_longer_than_the_cap_are_preceded_by_skips():
    # positions 0 and 41 (gaps 1 and 41) with cap 16: 1, then skip 16, skip 16, then 9
    assert _gap_symbols(np.array([1, 41]), 16).tolist() == [1, 0, 0, 9]
    assert _gap_symbols(np.array([16, 17, 32]), 16).tolist() == [16, 0, 1, 0, 16]
    assert np.flatnonzero(decode_positions(encode(np.array([1, 0, 0, 9])), 100, 16)).tolist() == [0, 41]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(2**20), 2**20), min_size=0, max_size=200), st.sampled_from([2**8, 2**16, 2**31]))
def test_stream_bytes_round_trip_at_the_narrowest_symbol_width(values, bound):
    values = np.array(values, dtype=np.int64)
    values = values % bound if bound < 2**31 else values
    stream = encode(values)
    data = to_bytes(stream)
    back = from_bytes(data)
    assert np.array_equal(decode(back), values)
    if bound == 2**8:  # one byte per alphabet entry, one per code length
        assert len(data) == 9 + 2 * len(stream.symbols) + stream.bits.size


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10))  # fmt: skip


def size(folder):
    return sum(f.stat().st_size for f in folder.iterdir())


def test_deep_compression_pack_is_smaller_and_loads_bit_exactly(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    pruned, _ = factorch.compress(net(), factorch.PruneConfig(sparsity=0.9, scope="layer"), example_inputs=x[:1])
    shared, _ = factorch.compress(pruned, factorch.KMeansConfig(bits=4), example_inputs=x[:1])
    factorch.save(net(), tmp_path / "dense")
    factorch.save(shared, tmp_path / "fixed")
    factorch.save(shared, tmp_path / "packed", pack=True)
    assert size(tmp_path / "packed") < size(tmp_path / "fixed") < size(tmp_path / "dense")
    back = factorch.load(tmp_path / "packed", base_model=net())
    torch.testing.assert_close(back(x), shared(x), rtol=0, atol=0)
    # weight sharing alone packs too (the indices Huffman-coded); pruning alone too (the positions)
    for model, name in ((factorch.compress(net(), factorch.KMeansConfig(bits=2), example_inputs=x[:1])[0], "k"),
                        (pruned, "p")):  # fmt: skip
        factorch.save(model, tmp_path / name, pack=True)
        torch.testing.assert_close(factorch.load(tmp_path / name, base_model=net())(x), model(x), rtol=0, atol=0)


def test_packing_a_model_with_nothing_to_pack_is_refused_and_writes_nothing(tmp_path):
    q, _ = factorch.compress(
        net(), factorch.QuantConfig(weight_bits=8, act_bits=32), example_inputs=torch.zeros(1, 1, 8, 8)
    )
    with pytest.raises(ValueError, match="pack=True"):
        factorch.save(q, tmp_path / "q", pack=True)
    assert not (tmp_path / "q").exists()


def test_packed_registry_model_omits_derivable_specs_and_rejects_a_damaged_file(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    model = factorch.models.create_model("lenet5")
    pruned, _ = factorch.compress(model, factorch.PruneConfig(sparsity=0.9), example_inputs=x[:1])
    shared, _ = factorch.compress(pruned, factorch.KMeansConfig(bits=3), example_inputs=x[:1])
    factorch.save(shared, tmp_path / "dc", pack=True)
    plan = json.loads((tmp_path / "dc" / "plan.json").read_text())
    assert plan["layers"] and all("spec" not in d for d in plan["layers"].values())  # read off the base model
    assert sorted(f.name for f in (tmp_path / "dc").iterdir()) == ["plan.json", "weights.bin"]
    torch.testing.assert_close(factorch.load(tmp_path / "dc")(x), shared(x), rtol=0, atol=0)
    blob = tmp_path / "dc" / "weights.bin"
    data = blob.read_bytes()
    for damaged in (data[:-1], data + b"\0"):
        blob.write_bytes(damaged)
        with pytest.raises(CheckpointError, match="weights.bin"):
            factorch.load(tmp_path / "dc")
    factorch.save(shared, tmp_path / "dc")  # the plain format over a packed folder: no stale weights.bin
    assert sorted(f.name for f in (tmp_path / "dc").iterdir()) == ["plan.json", "weights.pt"]
    torch.testing.assert_close(factorch.load(tmp_path / "dc")(x), shared(x), rtol=0, atol=0)
