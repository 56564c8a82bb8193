"""Shift Attention Layers as a compressed layer: a trained 2-D conv becomes a
:class:`factorch.nn.ShiftAttentionConv2d` initialised from its kernel (``factorch.compress(model,
SALConfig(keep=1))``), to be fine-tuned with ``factorch.finetune``, which drives the attention schedule to the
binarised layer: ``keep`` weights per ``(output, input)`` kernel slice. ``to_shift()`` of each layer gives the
executed shift + 1x1 form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, spec_of
from factorch.layers.base import MaskedDenseLayer, NotFactorizable, Spec, default_input_shape, meta_macs
from factorch.nn.shift import ShiftAttentionConv2d


class SALConv2d(MaskedDenseLayer, ShiftAttentionConv2d):
    """A ``k x k`` conv trained toward ``keep`` weights per kernel slice (Hacene et al. 2019). Its option is
    ``(keep,)``. Its cost is the binarised layer's: ``keep`` weights per slice (the attention is training
    state, not stored by ``factorch.save(pack=...)``-free accounting), ``keep / (k*k)`` of the conv's MACs.
    ``to_dense()`` gives the conv it computes now (the binarised one once trained)."""

    method = "sal"
    rank_names = ("keep",)
    exact_at_full_rank = True

    def __init__(self, spec: ConvSpec, keep: int = 1, ramp: float = 0.75, position_groups: int | None = None) -> None:
        ShiftAttentionConv2d.__init__(
            self, spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, spec.bias,
            keep=keep, ramp=ramp, position_groups=position_groups,
        )  # fmt: skip
        self.spec = spec
        self.options = {"ramp": ramp}
        if position_groups is not None:  # absent from the specs of layers saved before the option existed
            self.options["position_groups"] = position_groups

    @property
    def layer(self) -> nn.Conv2d:  # MaskedDenseLayer's name for the dense layer
        return self.conv

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.keep,)

    forward = ShiftAttentionConv2d.forward
    effective_weight = ShiftAttentionConv2d.effective_weight

    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, ConvSpec) or spec.dim != 2:
            raise NotFactorizable(f"sal handles 2-D convolutions, not {type(spec).__name__.removesuffix('Spec')}")
        if spec.groups != 1 or any(d != 1 for d in spec.dilation) or spec.padding_mode != "zeros":
            raise NotFactorizable(
                f"sal: groups={spec.groups}, dilation={spec.dilation}, padding_mode={spec.padding_mode!r} "
                "(groups 1, dilation 1, zero padding only)"
            )
        if isinstance(spec.padding, str):
            raise NotFactorizable(f"sal: padding={spec.padding!r} (numeric padding only)")
        if math.prod(spec.kernel_size) == 1:
            raise NotFactorizable("sal: a 1x1 conv has one weight per kernel slice already")
        groups = options.get("position_groups")
        if groups is not None and spec.out_channels % groups:
            raise NotFactorizable(f"sal: position_groups={groups} does not divide out_channels={spec.out_channels}")

    @classmethod
    def max_ranks(cls, spec: ConvSpec, options: dict) -> tuple[int, ...]:
        return (math.prod(spec.kernel_size),)

    @classmethod
    def option_cost(cls, spec: ConvSpec, ranks: tuple[int, ...] = (1,), input_size=None, **options) -> Cost:
        (keep,) = ranks
        kk = math.prod(spec.kernel_size)
        dense = spec.dense(device="meta")
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        weights = spec.out_channels * spec.in_channels * keep
        params = weights + spec.out_channels * spec.bias
        # each kept position: ceil(log2(k*k)) bits (what the executed shift form needs), one per kept weight, or
        # one per (group, input channel, kept weight) when the groups of outputs share them
        groups = options.get("position_groups") or spec.out_channels
        positions = groups * spec.in_channels * keep
        return Cost(params, params, weight_bits=32, macs=macs * keep // kk,
                    index_bits=positions * max(1, math.ceil(math.log2(kk))) if keep < kk else 0)  # fmt: skip

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        return None if after.size_bits < before.size_bits else "keeping every kernel position saves nothing"

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank=1, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        spec = spec_of(layer)
        cls.check(spec, options)
        keep = rank[0] if isinstance(rank, (tuple, list)) and len(rank) == 1 else rank
        kk = math.prod(spec.kernel_size)
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= kk:
            raise ValueError(f"{name or 'sal'}: keep must be an int in [1, {kk}], got {rank!r}")
        return (keep,)

    @classmethod
    def build(cls, spec: ConvSpec, ranks: tuple[int, ...] = (1,), device=None, **options) -> SALConv2d:
        return cls(spec, ranks[0], options.get("ramp", 0.75), options.get("position_groups")).to(
            device=device, dtype=spec.torch_dtype
        )

    @classmethod
    def from_dense(cls, layer: nn.Module, rank=1, *, decompose_weights: bool = True, input_size=None, **options):
        """A SAL layer from ``layer`` (left untouched): its weights copied, attention ``|w| / mean |w|``."""
        ranks = cls.resolve_ranks(layer, rank, **options)
        new = cls.build(spec_of(layer), ranks, device=layer.weight.device, **options)
        if decompose_weights:
            with torch.no_grad():
                new.conv.load_state_dict(layer.state_dict())
            new.reset_attention()
        return new

    def reconstruct_weight(self) -> Tensor:
        return self.effective_weight().detach().double()

    def extra_repr(self) -> str:
        return ShiftAttentionConv2d.extra_repr(self)
