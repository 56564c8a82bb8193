"""Quantization inside factorized chains: each stage of a Tucker-2 / CP / SVD chain quantized in place
(``QuantizedLayer.nests_in_chains``), so factorization and low-bit weights combine on one layer."""

import copy

import pytest
import torch
from torch import nn

import factorch
from factorch.apply import model_storage
from factorch.layers import FactorizedLayer
from factorch.layers.quantized import QuantizedLayer


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


X = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def factorized(config=None):
    model, _ = factorch.compress(net(), config or factorch.Tucker2Config(rank=(8, 8)), example_inputs=X)
    return model


@pytest.mark.parametrize(
    "config",
    [
        factorch.Tucker2Config(rank=(8, 8)),
        factorch.CPConfig(rank=6),
        factorch.SVDConfig(rank=5),
        factorch.SpatialSVDConfig(rank=4),
    ],  # fmt: skip
)
def test_every_stage_of_a_chain_is_quantized_and_the_chain_still_reads_as_its_dense_kernel(config):
    chain_model = factorized(config)
    q, report = factorch.compress(chain_model, factorch.QuantConfig(weight_bits=4, act_bits=32), example_inputs=X)
    chains = [m for m in q.modules() if isinstance(m, FactorizedLayer)]
    assert chains and all(c.compressed_stages() for c in chains)
    for chain in chains:
        stages = [m for _, m in chain.named_children()]
        assert all(isinstance(s, QuantizedLayer) for s in stages)
        # weights-only quantization: the chain computes exactly the conv of its dequantized dense kernel
        x = torch.randn(2, chain.spec.in_channels, 9, 9, dtype=torch.float64)
        chain64, dense = chain.double(), chain.to_dense().double()
        torch.testing.assert_close(chain64(x), dense(x), rtol=1e-5, atol=1e-6)  # dense holds float32 weights
        last = stages[-1].layer
        if last.bias is not None:  # the chain's bias survives in to_dense
            torch.testing.assert_close(dense.bias, last.bias.detach())
        torch.testing.assert_close(chain.reconstruct_weight().float().double(), dense.weight.detach(), rtol=0, atol=0)
    rows = {r.name: r for r in report.layers}
    stage_rows = [n for n in rows if n.startswith("2.")]
    assert stage_rows and all(rows[n].method == "quant" for n in stage_rows)
    assert "2" not in rows  # the chain itself is opened, not reported as "already factorized"


def test_score_and_storage_count_each_quantized_stage():
    chain_model = factorized()
    q, report = factorch.compress(
        chain_model, factorch.QuantConfig(weight_bits=4, act_bits=4), example_inputs=X, calib_data=X
    )
    x1 = X[:1]
    s_float, s_q = factorch.score(chain_model, x1), factorch.score(q, x1)
    # every multiplication at 4/4 bits: the counted operations fall exactly 8x; the stored parameters less
    # (float biases and per-channel scales stay 32-bit)
    assert s_q.ops == pytest.approx(s_float.ops / 8, rel=1e-12)
    assert s_float.params / 8 < s_q.params < s_float.params / 4
    store_f, store_q = model_storage(chain_model), model_storage(q)
    assert store_q["params"] == store_f["params"]
    expected = sum(m.layer_cost().size_bits for m in q.modules() if isinstance(m, QuantizedLayer))
    assert store_q["size_bytes"] == -(-expected // 8)
    assert report.totals["size_bytes"] == store_q["size_bytes"]


def test_a_quantized_chain_saves_packs_loads_and_exports_exactly(tmp_path):
    pytest.importorskip("onnxruntime")
    q, _ = factorch.compress(factorized(), factorch.QuantConfig(weight_bits=4, act_bits=8), example_inputs=X,
                             calib_data=X)  # fmt: skip
    folder = factorch.save(q, tmp_path / "m")
    back = factorch.load(folder, base_model=net())
    torch.testing.assert_close(back(X), q(X), rtol=0, atol=0)
    assert sum(isinstance(m, QuantizedLayer) for m in back.modules()) == 8
    plan = (folder / "plan.json").read_text()
    assert '"2.core"' in plan and '"packed"' in plan  # the stages' 4-bit codes are stored packed
    from factorch.profiling.onnx import ort_session
    from factorch.surgery import compressed_layers, replace_module

    path = factorch.export_onnx(q, tmp_path / "q.onnx", X)
    session = ort_session(path.read_bytes(), None, 1)
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.numpy()})[0])
    ref = copy.deepcopy(q)  # what the float ONNX file computes: every quantized stage as its dequantized layer
    for name, layer in list(compressed_layers(ref, nested=True)):
        if isinstance(layer, QuantizedLayer):
            replace_module(ref, name, layer.to_dense())
    assert not any(isinstance(m, QuantizedLayer) for m in ref.modules())
    torch.testing.assert_close(out, ref(X), rtol=1e-4, atol=1e-4)


def test_plans_name_single_stages_and_refuse_to_factorize_one():
    chain_model = factorized()
    q, _ = factorch.compress(chain_model, factorch.Plan({"2.core": factorch.QuantConfig(weight_bits=8, act_bits=32)}),
                             example_inputs=X)  # fmt: skip
    assert isinstance(q[2].core, QuantizedLayer) and not isinstance(q[2].first, QuantizedLayer)
    assert not isinstance(q[4].core, QuantizedLayer)
    with pytest.raises(ValueError, match="stage inside the factorized layer '2'"):
        factorch.compress(chain_model, factorch.Plan({"2.core": factorch.SVDConfig(rank=2)}), example_inputs=X)
    with pytest.raises(ValueError, match="'core' is compressed in place"):
        q[2].recompress((4, 4), name="2")


def test_a_key_naming_the_chain_sets_its_stages_own_key_first():
    both = factorch.compress(net(), factorch.Plan({"0": factorch.SVDConfig(rank=3), "2": factorch.Tucker2Config(
        rank=(8, 8))}), example_inputs=X, keep_edges=False)[0]  # fmt: skip
    q4, q8 = factorch.QuantConfig(weight_bits=4, act_bits=32), factorch.QuantConfig(weight_bits=8, act_bits=32)
    plan = factorch.Plan({"_default": q4, "0": q8, "2.core": q8, "4": None})
    q, _ = factorch.compress(both, plan, example_inputs=X)
    assert q[0].first.weight_bits == 8 and q[0].second.weight_bits == 8  # the chain's key
    assert q[2].core.weight_bits == 8 and q[2].first.weight_bits == 4  # a stage's own key before the chain's
    assert not isinstance(q[4], QuantizedLayer)  # None: left as it is
    q_none, _ = factorch.compress(both, factorch.Plan({"_default": q4, "2": None}), example_inputs=X)
    assert not q_none[2].compressed_stages() and q_none[0].compressed_stages()


def test_a_quantized_chains_own_cost_counts_its_stages():
    q, _ = factorch.compress(factorized(), factorch.Plan({"2.core": factorch.QuantConfig(weight_bits=4,
                             act_bits=32)}), example_inputs=X)  # fmt: skip
    chain, core = q[2], q[2].core
    float_chain = factorized()[2]
    cost, float_cost = chain.layer_cost((12, 12)), float_chain.layer_cost((12, 12))
    assert cost.macs == float_cost.macs and cost.params == float_cost.params + (core.layer_cost().params - 576)
    plain = sum(p.numel() for n, p in chain.named_parameters() if not n.startswith("core."))
    assert cost.size_bits == core.layer_cost().size_bits + 32 * plain
    assert cost.size_bits < float_cost.size_bits
