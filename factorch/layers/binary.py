"""Binary weights as a compressed layer: BinaryConnect (Courbariaux et al. 2015), Binary Weight Networks and
XNOR-Net (Rastegari et al. 2016).

The real-valued weights are kept (:attr:`BinaryLayer.layer`) and updated by training; the forward pass uses
their signs (``+1`` for ``w >= 0``), the gradient passes straight through where ``|w| <= 1`` (BinaryConnect's
clipped estimator). ``"bwn"`` scales each output filter by ``alpha = mean |W|``; ``"xnor"`` binarises the
inputs too and rescales the output by ``beta``: the mean of ``|x - t|`` over the input channels, averaged over
each kernel window (XNOR-Net's ``K``), per output position. Stored at 1 bit per weight plus the scales.

XNOR-Net binarises the output of a BatchNorm (its block is BN -> sign -> conv), which is centred on zero. In
the conv -> BN -> ReLU networks users bring, a layer's input is a ReLU output, never negative, and ``sign(x)``
is the constant ``+1``: measured on vgg, the network fell to chance (9.89 %). So ``"xnor"`` binarises
``x - t`` with a learned threshold ``t`` per input channel (ReActNet's RSign, Liu et al. 2020), started at
the channel's mean over the first training batch; ``t = 0`` is the paper's layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, LinearSpec, spec_of
from factorch.layers.base import (
    MaskedDenseLayer,
    NotFactorizable,
    Spec,
    count_params,
    default_input_shape,
    meta_macs,
    pack_bits,
    unpack_bits,
)

BINARY_MODES = ("binaryconnect", "bwn", "xnor")
PACKED_FORMAT = "signbits"


def binarize(w: Tensor) -> Tensor:
    """``sign(w)`` with ``sign(0) = +1``; gradient straight through where ``|w| <= 1``, 0 elsewhere."""
    signs = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    clipped = w.clamp(-1.0, 1.0)
    return clipped + (signs - clipped).detach()


class BinaryLayer(MaskedDenseLayer, nn.Module):
    """A dense ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` computing with binary weights (see the module
    docstring). Its option is ``(1,)``: one bit per weight. ``to_dense()`` gives the dense layer with the
    scaled signs as weights (exact for ``binaryconnect`` and ``bwn``; ``xnor`` also binarises its inputs, which
    no dense layer does).

    References:
        Courbariaux et al. 2015, "BinaryConnect"; Rastegari et al. 2016, "XNOR-Net".
    """

    method = "binary"
    rank_names = ("weight_bits",)
    exact_at_full_rank = False
    compress_edges = False  # the first conv and the classifier stay real-valued, as in both papers

    def __init__(self, layer: nn.Module, spec: Spec, mode: str = "bwn") -> None:
        super().__init__()
        self.layer, self.spec = layer, spec
        self.options = {"mode": mode}
        channels = spec.out_channels if isinstance(spec, ConvSpec) else spec.out_features
        # alpha as stored by a packed save (NaN: computed from the real weights, as in training)
        self.register_buffer("stored_alpha", torch.full((channels,), math.nan, device=layer.weight.device))
        if mode == "xnor":  # the binarisation threshold per input channel (NaN: set by the first training batch)
            inputs = spec.in_channels if isinstance(spec, ConvSpec) else spec.in_features
            self.input_shift = nn.Parameter(torch.full((inputs,), math.nan, device=layer.weight.device))

    @property
    def ranks(self) -> tuple[int, ...]:
        return (1,)

    @property
    def mode(self) -> str:
        return self.options["mode"]

    def operand_bits(self) -> tuple[float, float]:
        """1-bit weights; XNOR-Net's inputs are binarised too (their scale applied after the sum)."""
        return 1.0, 1.0 if self.mode == "xnor" else float(torch.finfo(self.layer.weight.dtype).bits)

    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, (ConvSpec, LinearSpec)):
            raise NotFactorizable(f"binary handles Conv1d, Conv2d and Linear layers, not {type(spec).__name__}")
        mode = options.get("mode", "bwn")
        if mode not in BINARY_MODES:
            raise ValueError(f"binary: mode must be one of {', '.join(BINARY_MODES)}, got {mode!r}")
        if mode == "xnor" and isinstance(spec, ConvSpec) and spec.padding_mode != "zeros":
            raise NotFactorizable(f"xnor: padding_mode {spec.padding_mode!r} (zeros only)")

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        return (1,)

    @staticmethod
    def _counts(spec: Spec) -> tuple[int, int, int]:
        if isinstance(spec, ConvSpec):
            out = spec.out_channels
            return out * spec.in_per_group * spec.kernel_numel, out * spec.bias, out
        return spec.out_features * spec.in_features, spec.out_features * spec.bias, spec.out_features

    @classmethod
    def option_cost(cls, spec: Spec, ranks: tuple[int, ...] = (1,), input_size=None, **options) -> Cost:
        """1 bit per weight; biases in float32; one float32 ``alpha`` per output filter (``bwn``, ``xnor``) and
        one float32 input threshold per input channel (``xnor``)."""
        dense = spec.dense(device="meta")
        weights, biases, channels = cls._counts(spec)
        scales = 0 if options.get("mode", "bwn") == "binaryconnect" else channels
        if options.get("mode", "bwn") == "xnor":  # and one float32 threshold per input channel
            scales += spec.in_channels if isinstance(spec, ConvSpec) else spec.in_features
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        params = count_params(dense)
        return Cost(
            params=params,
            nonzero_params=params,
            weight_bits=1,
            macs=macs,
            index_bits=biases * 31 + scales * 32,
            op_bits=1 if options.get("mode", "bwn") == "xnor" else 32,
        )

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        return None if after.size_bits < before.size_bits else "binary weights store no fewer bits"

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank=1, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        cls.check(spec_of(layer), options)
        if rank not in (1, (1,), [1]):
            raise ValueError(f"{name or type(layer).__name__}: binary weights take 1 bit, got {rank!r}")
        return (1,)

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...] = (1,), device=None, **options) -> BinaryLayer:
        return cls(spec.dense(device=device), spec, options.get("mode", "bwn"))

    @classmethod
    def from_dense(cls, layer: nn.Module, rank=1, *, decompose_weights: bool = True, input_size=None, **options):
        """Binarise ``layer`` (left untouched); its real weights are the starting point of training."""
        cls.resolve_ranks(layer, rank, **options)
        new = cls.build(spec_of(layer), (1,), device=layer.weight.device, **options)
        if decompose_weights:
            new.layer.load_state_dict(layer.state_dict())
        return new

    def binary_weight(self) -> Tensor:
        """The weight the layer computes with: signs, times ``alpha`` per output filter (``bwn``, ``xnor``)."""
        w = self.layer.weight
        signs = binarize(w)
        if self.mode == "binaryconnect":
            return signs
        if not torch.isnan(self.stored_alpha[0]):
            return signs * self.stored_alpha.view(-1, *[1] * (w.dim() - 1))
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return signs * alpha

    def _beta(self, x: Tensor) -> Tensor:
        """XNOR-Net's input scale per output position: mean ``|x|`` over channels, averaged per kernel window."""
        a = x.abs().mean(dim=1, keepdim=True)
        if isinstance(self.spec, LinearSpec):
            return a
        conv = self.layer
        k = torch.ones((1, 1, *conv.kernel_size), dtype=x.dtype, device=x.device) / math.prod(conv.kernel_size)
        fn = F.conv1d if x.dim() == 3 else F.conv2d
        return fn(a, k, None, conv.stride, conv.padding, conv.dilation)

    def _centred(self, x: Tensor) -> Tensor:
        """``x - t``, the threshold ``t`` per input channel: set to the channel's mean on the first training
        batch (not on an example input profiled in eval mode, e.g. a zero image); 0 until then."""
        shift = self.input_shift
        if torch.isnan(shift).any():
            if not self.training:
                return x
            with torch.no_grad():
                dims = [d for d in range(x.dim()) if d != 1]
                shift.copy_(x.detach().mean(dim=dims))
        return x - shift.view(1, -1, *[1] * (x.dim() - 2))

    def forward(self, x: Tensor) -> Tensor:
        w = self.binary_weight()
        if self.mode == "xnor":
            x = self._centred(x)
            beta = self._beta(x.detach())
            xb = binarize(x)
            out = F.linear(xb, w) if isinstance(self.spec, LinearSpec) else self.layer._conv_forward(xb, w, None)
            out = out * beta
            bias = self.layer.bias
            if bias is not None:
                out = out + (bias if isinstance(self.spec, LinearSpec) else bias.view(1, -1, *[1] * (x.dim() - 2)))
            return out
        return self.dense_forward(x, w)

    effective_weight = binary_weight  # to_dense: exact for binaryconnect and bwn (xnor binarises inputs too)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    # -- compact storage: the signs as bits, alpha per filter ----------------------------------------------
    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        """The signs at 1 bit each and ``alpha`` per filter; the real weights (for further training) are not
        kept: loading gives the layer whose real weights are the scaled signs, computing with the stored
        ``alpha`` (the same outputs, bit for bit)."""
        w = state["layer.weight"]
        packed = {k: v for k, v in state.items() if k not in ("layer.weight", "stored_alpha")}
        packed["sign_bits"] = pack_bits(w >= 0)
        if self.mode != "binaryconnect":
            stored = state["stored_alpha"]
            computed = w.abs().mean(dim=tuple(range(1, w.dim()))).float()
            packed["alpha"] = computed if torch.isnan(stored[0]) else stored
        return packed, PACKED_FORMAT

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        if fmt != PACKED_FORMAT:
            return super().unpack_state(packed, fmt, spec)
        shape = spec.dense(device="meta").weight.shape
        signs = unpack_bits(packed["sign_bits"], tuple(shape)).float() * 2 - 1
        state = {k: v for k, v in packed.items() if k not in ("sign_bits", "alpha")}
        alpha = packed.get("alpha")
        state["layer.weight"] = signs if alpha is None else signs * alpha.view(-1, *[1] * (len(shape) - 1))
        state["stored_alpha"] = torch.full((shape[0],), math.nan) if alpha is None else alpha
        return state
