"""Shift convolutions: ShiftConv2d equals the k x k conv it stands for; a Shift Attention Layer starts as its
dense conv, ends with exactly ``keep`` weights per kernel slice, and its executed shift + 1x1 form gives the
same outputs; the schedule follows training progress (finetune drives it)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import factorch
from factorch.nn import ShiftAttentionConv2d, ShiftConv2d

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
conv_shapes = dict(cin=st.integers(1, 7), cout=st.integers(1, 6), k=st.sampled_from([1, 2, 3, 5]),
                   stride=st.integers(1, 3), hw=st.integers(5, 10))  # fmt: skip


@SETTINGS
@given(**conv_shapes, pad=st.integers(0, 2), data=st.data())
def test_shift_conv_equals_its_dense_kxk_conv(cin, cout, k, stride, hw, pad, data):
    n = data.draw(st.integers(1, 2 * cin))
    sources = torch.tensor(data.draw(st.lists(st.integers(0, cin - 1), min_size=n, max_size=n)))
    positions = torch.tensor(data.draw(st.lists(st.integers(0, k * k - 1), min_size=n, max_size=n)))
    m = ShiftConv2d(cin, cout, k, stride, pad, sources=sources, positions=positions).double()
    x = torch.randn(2, cin, hw, hw, dtype=torch.float64)
    ref = F.conv2d(x, m.dense_weight(), m.pointwise.bias, stride, pad)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.to_conv()(x), ref, rtol=1e-12, atol=1e-12)
    ho = (hw + 2 * pad - k) // stride + 1
    assert factorch.profile(m, x[:1]).total_macs == ho * ho * n * cout  # the shift itself: no MAC


def test_default_shift_spreads_the_channels_over_the_offsets_in_contiguous_groups():
    m = ShiftConv2d(18, 4, 3)
    assert m.positions.tolist() == [c * 9 // 18 for c in range(18)] and m.sources.tolist() == list(range(18))
    assert all(first is not None for *_, first in m._groups)  # sliced, not gathered
    dense = m.dense_weight()
    assert ((dense != 0).sum(dim=(2, 3)) <= 1).all()  # one position per input channel


@SETTINGS
@given(**conv_shapes, keep=st.integers(1, 2))
def test_sal_starts_dense_ends_with_keep_weights_per_slice_and_its_shift_form_is_exact(cin, cout, k, stride, hw, keep):
    keep = min(keep, k * k)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2).double()
    sal = ShiftAttentionConv2d.from_conv(conv, keep=keep)
    x = torch.randn(2, cin, hw, hw, dtype=torch.float64)
    torch.testing.assert_close(sal(x), conv(x), rtol=1e-12, atol=1e-12)  # progress 0: the dense conv
    sal.binarize()
    w = sal.effective_weight().detach()
    assert ((w != 0).flatten(2).sum(-1) <= keep).all()
    kept = sal.hard_mask().sum(-1)
    assert (kept == keep).all()
    # the largest |w| of each slice is kept first (attention initialised from the magnitudes)
    top = conv.weight.detach().abs().flatten(2).argmax(-1, keepdim=True)
    assert sal.hard_mask().gather(-1, top).eq(1).all()
    torch.testing.assert_close(sal(x), F.conv2d(x, w, conv.bias, stride, k // 2), rtol=1e-12, atol=1e-12)
    fast = sal.to_shift()
    assert fast.shifted_channels <= cin * min(k * k, cout * keep)
    torch.testing.assert_close(fast(x), sal(x), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(**conv_shapes, keep=st.integers(1, 2), data=st.data())
def test_position_groups_share_positions_within_each_group_of_outputs(cin, cout, k, stride, hw, keep, data):
    keep = min(keep, k * k)
    groups = data.draw(st.sampled_from([g for g in range(1, cout + 1) if cout % g == 0]))
    conv = nn.Conv2d(cin, cout, k, stride, k // 2).double()
    sal = ShiftAttentionConv2d.from_conv(conv, keep=keep, position_groups=groups)
    assert sal.attention.shape == (groups, cin, k * k)
    x = torch.randn(2, cin, hw, hw, dtype=torch.float64)
    torch.testing.assert_close(sal(x), conv(x), rtol=1e-12, atol=1e-12)  # progress 0: the dense conv
    sal.binarize()
    hard = sal.hard_mask()
    assert hard.shape == (cout, cin, k * k) and (hard.sum(-1) == keep).all()
    per_group = hard.view(groups, cout // groups, cin, k * k)
    assert (per_group == per_group[:, :1]).all()  # every output of a group keeps the same positions
    # the group's first choice: the largest |w| averaged over the group's outputs
    mean_w = conv.weight.detach().abs().flatten(2).view(groups, cout // groups, cin, k * k).mean(1)
    assert per_group[:, 0].gather(-1, mean_w.argmax(-1, keepdim=True)).eq(1).all()
    fast = sal.to_shift()
    assert fast.shifted_channels <= cin * min(k * k, groups * keep)
    w = sal.effective_weight().detach()
    torch.testing.assert_close(fast(x), F.conv2d(x, w, conv.bias, stride, k // 2), rtol=1e-10, atol=1e-10)


def test_position_groups_one_is_a_learned_shift_with_one_shifted_copy_per_input_channel():
    torch.manual_seed(0)
    sal = ShiftAttentionConv2d(8, 12, 3, position_groups=1)
    sal.attention.data.normal_()
    sal(torch.randn(2, 8, 6, 6)).square().sum().backward()  # the group's gradient: summed over its outputs
    assert sal.attention.grad.shape == (1, 8, 9) and sal.attention.grad.abs().sum() > 0
    fast = sal.binarize().to_shift()
    assert fast.shifted_channels == 8 and sorted(fast.sources.tolist()) == list(range(8))
    assert "position_groups=1" in repr(sal)


@pytest.mark.parametrize("groups", [None, 1])
def test_settled_attention_keeps_the_choice_through_float16(groups):
    torch.manual_seed(0)
    sal = ShiftAttentionConv2d(6, 4, 3, keep=2, position_groups=groups)
    with pytest.raises(ValueError, match="not binarised"):
        sal.settle_attention()
    with torch.no_grad():  # logits that float16 rounds to ties: the choice would move to the lowest position
        sal.attention.copy_(1.0 + 1e-4 * torch.rand_like(sal.attention))
    sal.binarize()
    x = torch.randn(2, 6, 7, 7)
    before, hard = sal(x), sal.hard_mask()
    assert not torch.equal(sal.attention.half().float().argsort(-1), sal.attention.argsort(-1))
    sal.settle_attention()
    assert torch.equal(sal.hard_mask(), hard) and torch.equal(sal(x), before)
    sal.attention.data = sal.attention.data.half().float()
    assert torch.equal(sal.hard_mask(), hard)


def test_schedule_is_cubic_over_the_ramp():
    sal = ShiftAttentionConv2d(2, 2, keep=1, ramp=0.5)
    values = []
    for p in (0.0, 0.25, 0.5, 0.9):
        sal.set_training_progress(p)
        values.append(sal.hardness)
    assert values == pytest.approx([0.0, 1 - 0.5**3, 1.0, 1.0])


def test_attention_learns_from_the_first_step():
    torch.manual_seed(0)
    sal = ShiftAttentionConv2d(3, 4, keep=1)
    sal(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert sal.attention.grad is not None and sal.attention.grad.abs().sum() > 0


def test_finetune_drives_the_schedule_to_the_binarised_layer():
    torch.manual_seed(0)
    model = nn.Sequential(ShiftAttentionConv2d(1, 4, keep=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 3, (64,)))
    seen = []
    model[0].register_forward_pre_hook(lambda m, a: seen.append(m.hardness) if m.training else None)
    out = factorch.finetune(model, data, epochs=2, batch_size=16, show_progress=False)
    assert seen[0] == 0.0 and seen == sorted(seen) and seen[-1] == 1.0  # 8 steps, ramp 0.75
    sal = out[0]
    assert float(sal.progress) == 1.0
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(sal.to_shift()(x), sal(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ShiftAttentionConv2d(2, 2, 3, keep=10), "keep must be an int in \\[1, 9\\]"),
        (lambda: ShiftAttentionConv2d(2, 2, 3, ramp=0.0), "ramp"),
        (lambda: ShiftAttentionConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2)), "groups=2"),
        (lambda: ShiftAttentionConv2d(2, 6, 3, position_groups=4), "position_groups must be None or a positive int"),
        (lambda: ShiftAttentionConv2d(2, 6, 3, position_groups=0), "dividing out_channels \\(6\\)"),
        (lambda: ShiftConv2d(2, 2, 3, sources=torch.tensor([2]), positions=torch.tensor([0])), "sources"),
        (lambda: ShiftConv2d(2, 2, 3, sources=torch.tensor([0]), positions=torch.tensor([9])), "positions"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_score_counts_the_shift_as_a_memory_move():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 8, 8)
    shift = ShiftConv2d(6, 5, 3).eval()
    pointwise = nn.Conv2d(6, 5, 1).eval()
    a, b = factorch.score(shift, x), factorch.score(pointwise, x)
    assert a.ops == b.ops and a.params == b.params
