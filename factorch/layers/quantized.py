"""Uniform quantization as a compressed layer (Jacob et al. 2018): a dense Conv/Linear whose weights, and
optionally its input activations, go through quantize -> dequantize ("fake quantization") with fixed scales.

The forward arithmetic is torch's own, bit for bit (``torch.fake_quantize_per_channel_affine`` /
``..._per_tensor_affine``: round half to even of ``x * (1 / scale)``, clamp, rescale), so the float model
computes exactly what an integer kernel with these scales would; the gradients are straight through, with
learned step sizes when asked (:func:`lsq_quantize`). Written here: the choice of the scales (the observers:
min/max, percentile, least squares), which torch keeps only in its deprecated ``torch.ao.quantization``, the
learned step sizes (torch's learnable fake quantization is a private op) and the compact storage of the codes.

``factorch.save`` stores the weights as their integer codes packed at their bit width, plus the scales
(:meth:`QuantizedLayer.pack_state`); ``load`` restores the exact dequantized weights.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, LinearSpec, spec_of
from factorch.layers.base import MaskedDenseLayer, NotFactorizable, Spec, count_params, default_input_shape, meta_macs

OBSERVERS = ("minmax", "percentile", "mse")
INT_BITS = tuple(range(2, 9))
FLOAT_BITS = (16, 32)  # 16: half precision (IEEE fp16); 32: left in float32
PACKED_FORMAT = "intcodes"
_MSE_GRID = 64  # clipping ratios tried by the "mse" observer
_SAMPLE_PER_BATCH = 1 << 16  # activation values sampled per calibration batch (percentile / mse observers)


def check_bits(value, name: str) -> int:
    """``value`` as an int bit width: 2..8 (integer grid), 16 (half) or 32 (float, not quantized)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) not in INT_BITS + FLOAT_BITS:
        raise ValueError(f"{name} must be an int in 2..8, 16 (half) or 32 (float), got {value!r}")
    return int(value)


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer grid of a ``bits``-bit code: signed and narrow (``[-(2^(b-1)-1), 2^(b-1)-1]``, zero point 0)
    when ``symmetric``, else unsigned (``[0, 2^b - 1]``) with a zero point."""
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def _qparams(lo: Tensor, hi: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scales (float32) and zero points (int32) that map ``[lo, hi]`` (per row; 0 always inside) on the grid."""
    qmin, qmax = int_range(bits, symmetric)
    lo, hi = lo.double().clamp(max=0.0), hi.double().clamp(min=0.0)
    if symmetric:
        scale = torch.maximum(hi, -lo) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
    tiny = torch.finfo(torch.float32).tiny * 2**10
    scale = scale.float().clamp_min(tiny)  # an all-zero row: any positive scale, its codes are 0
    if not symmetric:
        zero = (qmin - torch.round(lo.float() / scale)).clamp(qmin, qmax)
    return scale, zero.to(torch.int32)


def fake_quant(x: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool, axis: int | None) -> Tensor:
    """``x`` quantized and dequantized by torch's own op (per channel along ``axis``, or per tensor)."""
    qmin, qmax = int_range(bits, symmetric)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero.reshape(()), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, axis, qmin, qmax)


def _along(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Per-channel ``t`` shaped to broadcast over ``x`` along ``axis`` (a scalar when ``axis`` is None)."""
    if axis is None:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


MIN_STEP = 1e-8  # the smallest learned step size (LSQ) a fake quantization divides by


def lsq_quantize(
    x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int, axis: int | None, grad_scale: float
) -> Tensor:
    """Fake quantization whose forward is torch's kernel bit for bit (``clamp(round(x * (1 / s)) + z) - z) * s``
    in float32) and whose gradients are the learned step size's (LSQ, Esser et al. 2020): straight through
    the rounding for ``x`` inside the range (0 outside), ``round(x / s) - x / s`` (or the clamped code) for
    ``s``, scaled by ``grad_scale`` (``1 / sqrt(n * qmax)`` for ``n`` values per scale). Written here because
    torch's learnable fake quantization is a private op."""
    s, z = _along(scale, x, axis), _along(zero, x, axis).to(x.dtype)
    if s.requires_grad:
        s = s * grad_scale + (s - s * grad_scale).detach()  # the value s, the gradient scaled
        # a learned step that SGD pushed through zero (seen on the 3-weight channels of CP chains' depthwise
        # stages at 4 bits) acts by its magnitude, never as a sign flip of an affine grid or a division by 0
        s = s.abs().clamp_min(MIN_STEP)
    v = x * (1.0 / s)
    rounded = v + (torch.round(v) - v).detach()  # round, gradient straight through
    return ((rounded + z).clamp(qmin, qmax) - z) * s


def codes_of(x: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool, axis: int | None) -> Tensor:
    """The integer codes (int64) that :func:`fake_quant` dequantizes: ``clamp(round(x * (1 / s)) + z)``,
    in float32 as torch's kernel computes them."""
    qmin, qmax = int_range(bits, symmetric)
    inv = 1.0 / _along(scale.float(), x, axis)
    return (torch.round(x.float() * inv) + _along(zero, x, axis)).clamp(qmin, qmax).long()


def observe_range(rows: Tensor, bits: int, symmetric: bool, observer: str, percentile: float) -> tuple[Tensor, Tensor]:
    """Per row of ``rows`` (``(R, N)``), the clipping range ``(lo, hi)`` the observer chooses.

    ``minmax``: the extremes. ``percentile``: the ``percentile`` and ``100 - percentile`` quantiles (of
    ``|x|`` when symmetric). ``mse``: the extremes scaled by the ratio in ``(0, 1]`` (a grid of 64) whose
    quantization error ``||x - fq(x)||^2`` is least, per row.
    """
    rows = rows.detach().float()
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        q = percentile / 100.0
        if symmetric:
            top = torch.quantile(rows.abs(), q, dim=1)
            return -top, top
        return torch.quantile(rows, 1.0 - q, dim=1), torch.quantile(rows, q, dim=1)
    if observer != "mse":
        raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    best_err = torch.full_like(lo, math.inf)
    best_lo, best_hi = lo.clone(), hi.clone()
    for k in range(_MSE_GRID):
        ratio = 1.0 - k / _MSE_GRID  # 1 down to 1/64
        scale, zero = _qparams(lo * ratio, hi * ratio, bits, symmetric)
        err = (fake_quant(rows, scale, zero, bits, symmetric, 0) - rows).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * ratio, best_lo), torch.where(better, hi * ratio, best_hi)
    return best_lo, best_hi


def pack_codes(codes: Tensor, bits: int, offset: int) -> Tensor:
    """Integer codes (shifted by ``-offset`` to be non-negative, below ``2**bits``) as a uint8 tensor of
    ``ceil(n * bits / 8)`` bytes: each code's ``bits`` bits, most significant first, back to back."""
    values = (codes.flatten().long() - offset).cpu().numpy().astype(np.uint16)
    if values.size and (values.max() >= 2**bits):
        raise ValueError(f"codes do not fit in {bits} bits")
    planes = ((values[:, None] >> np.arange(bits - 1, -1, -1, dtype=np.uint16)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack_codes(packed: Tensor, bits: int, offset: int, numel: int) -> Tensor:
    """The codes :func:`pack_codes` packed (int64)."""
    planes = np.unpackbits(packed.cpu().numpy(), count=numel * bits).reshape(numel, bits).astype(np.int64)
    values = planes @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return torch.from_numpy(values + offset)


class QuantizedLayer(MaskedDenseLayer, nn.Module):
    """A dense ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` (kept whole as :attr:`layer`, its float weights the
    ones fine-tuning updates) computing with fake-quantized weights and, when ``act_bits < 32``, fake-quantized
    inputs.

    Its option is ``(weight_bits, act_bits)``: 2..8 (integer grid), 16 (half precision) or 32 (float32, left
    as is). Weights: one scale per output channel (``per_channel``) or per tensor, symmetric (signed narrow
    grid, zero point 0) or affine. Activations: one affine per-tensor scale and zero point, set by
    :func:`calibrate_activations` from calibration inputs (until then, inputs pass unquantized).
    ``to_dense()`` gives the dense layer with the dequantized weights.

    References:
        Jacob et al. 2018, "Quantization and training of neural networks for efficient integer-arithmetic-only
        inference"; Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: a
        whitepaper".
    """

    method = "quant"
    rank_names = ("weight_bits", "act_bits")
    exact_at_full_rank = True  # 32 / 32 bits is the dense layer
    compress_edges = True  # int8 quantizes every layer; name the edges at 8 bits in a Plan for lower widths
    nests_in_chains = True  # the stages of a factorized chain are quantized in place

    def __init__(
        self,
        layer: nn.Module,
        spec: Spec,
        weight_bits: int,
        act_bits: int,
        *,
        per_channel: bool = True,
        symmetric: bool = True,
        observer: str = "minmax",
        percentile: float = 99.99,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        self.layer, self.spec = layer, spec
        self.weight_bits = check_bits(weight_bits, "weight_bits")
        self.act_bits = check_bits(act_bits, "act_bits")
        self.options = dict(
            per_channel=per_channel,
            symmetric=symmetric,
            observer=observer,
            percentile=percentile,
            learn_scale=learn_scale,
        )
        channels = spec.out_channels if isinstance(spec, ConvSpec) else spec.out_features
        n = channels if per_channel else 1
        device = layer.weight.device
        if learn_scale:  # LSQ: the step sizes are trained with the weights (see lsq_quantize)
            self.weight_scale = nn.Parameter(torch.ones(n, device=device))
            self.act_scale = nn.Parameter(torch.ones(1, device=device))
        else:
            self.register_buffer("weight_scale", torch.ones(n, device=device))
            self.register_buffer("act_scale", torch.ones(1, device=device))
        self.register_buffer("weight_zero", torch.zeros(n, dtype=torch.int32, device=device))
        self.register_buffer("act_zero", torch.zeros(1, dtype=torch.int32, device=device))
        self.register_buffer("act_ready", torch.zeros((), dtype=torch.bool, device=device))
        self._observing: list[tuple[Tensor, Tensor, Tensor]] | None = None

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.weight_bits, self.act_bits)

    def operand_bits(self) -> tuple[float, float]:
        return float(self.weight_bits), float(self.act_bits)

    @property
    def needs_activation_ranges(self) -> bool:
        """Its inputs are quantized and their range is not set yet (``calibrate_activations`` sets it)."""
        return self.act_bits in INT_BITS and not bool(self.act_ready)

    # -- the protocol ------------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, (ConvSpec, LinearSpec)):
            raise NotFactorizable(f"quant handles Conv1d, Conv2d and Linear layers, not {type(spec).__name__}")
        if spec.torch_dtype != torch.float32:
            raise NotFactorizable(f"quant takes float32 layers, not {spec.torch_dtype}")
        observer = options.get("observer", "minmax")
        if observer not in OBSERVERS:
            raise ValueError(f"quant: observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")

    @classmethod
    def search_grid(cls, problem, levels) -> list[tuple[int, ...]]:
        """Weight bit widths for ``AutoConfig`` (activations left in float32: a storage budget does not see
        them, and their ranges need calibration the search does not run)."""
        return [(bits, 32) for bits in (8, 6, 5, 4, 3, 2)]

    @classmethod
    def score_grid(cls, problem, levels) -> list[tuple[int, ...]]:
        """Weight and activation bit widths for a complexity-score budget, which charges each MAC at its
        widest operand: activations quantized too (the search calibrates their ranges on its inputs)."""
        return [(8, 8), (6, 6), (4, 8), (4, 4), (3, 4), (2, 4), (2, 2), (8, 32), (4, 32), (2, 32)]

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        if after.size_bits < before.size_bits:
            return None
        return f"{after.weight_bits:g}-bit weights store no fewer bits than the layer's {before.weight_bits:g}"

    @staticmethod
    def _split(spec: Spec) -> tuple[int, int, int]:
        """``(weights, biases, output channels)`` of the dense layer."""
        if isinstance(spec, ConvSpec):
            return (
                spec.out_channels * spec.in_per_group * spec.kernel_numel,
                spec.out_channels * spec.bias,
                (spec.out_channels),
            )
        return spec.out_features * spec.in_features, spec.out_features * spec.bias, spec.out_features

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        return (32, 32)

    @classmethod
    def option_cost(cls, spec: Spec, ranks: tuple[int, ...], input_size=None, **options) -> Cost:
        """Weights at ``weight_bits``; biases in float32; per scale 32 bits (and a zero point at the code width
        when affine); the activation scale and zero point when activations are quantized. MACs unchanged."""
        wb, ab = int(ranks[0]), int(ranks[1])
        dense = spec.dense(device="meta")
        weights, biases, channels = cls._split(spec)
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        extra = biases * (32 - wb)
        if wb in INT_BITS:
            scales = channels if options.get("per_channel", True) else 1
            extra += scales * 32 + (0 if options.get("symmetric", True) else scales * wb)
        if ab in INT_BITS:
            extra += 32 + ab
        return Cost(params=count_params(dense), nonzero_params=count_params(dense), weight_bits=wb, macs=macs,
                    index_bits=extra, op_bits=max(wb, ab))  # fmt: skip

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        """``(weight_bits, act_bits)`` from an int (weight bits; ``act_bits`` from the options, default 32) or a
        pair."""
        spec = spec_of(layer)
        cls.check(spec, options)
        where = f"{name or type(layer).__name__}: "
        if isinstance(rank, (tuple, list)):
            if len(rank) != 2:
                raise ValueError(f"{where}a quantization option is (weight_bits, act_bits), got {tuple(rank)}")
            pair = rank
        else:
            pair = (rank, options.get("act_bits", 32))
        try:
            return (check_bits(pair[0], "weight_bits"), check_bits(pair[1], "act_bits"))
        except ValueError as err:
            raise ValueError(where + str(err)) from None

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...] = (32, 32), device=None, **options) -> QuantizedLayer:
        """The structure (weights and scales unset): what loading rebuilds before the state dict."""
        keys = ("per_channel", "symmetric", "observer", "percentile", "learn_scale")
        opts = {k: v for k, v in options.items() if k in keys}
        return cls(spec.dense(device=device), spec, int(ranks[0]), int(ranks[1]), **opts)

    @classmethod
    def from_dense(
        cls, layer: nn.Module, rank=8, *, decompose_weights: bool = True, input_size=None, **options
    ) -> QuantizedLayer:
        """Quantize ``layer`` (left untouched): weight scales chosen by the observer now; activation ranges by
        :func:`calibrate_activations` later.

        Args:
            layer: a dense float32 Conv1d / Conv2d / Linear.
            rank: weight bits (int) or ``(weight_bits, act_bits)``.
            decompose_weights: ``False`` builds the structure only (before loading a state dict).
            options: ``act_bits`` (when ``rank`` is an int), ``per_channel``, ``symmetric``, ``observer``,
                ``percentile``.
        """
        ranks = cls.resolve_ranks(layer, rank, **options)
        spec = spec_of(layer)
        new = cls.build(spec, ranks, device=layer.weight.device, **options)
        if decompose_weights:
            with torch.no_grad():
                new.layer.weight.copy_(layer.weight)
                if layer.bias is not None:
                    new.layer.bias.copy_(layer.bias)
                new.set_weight_scales()
        return new

    def set_weight_scales(self) -> None:
        """Choose the weight scales from the current weights by the observer."""
        if self.weight_bits not in INT_BITS:
            return
        o = self.options
        w = self.layer.weight.detach()
        rows = w.reshape(w.shape[0], -1) if o["per_channel"] else w.reshape(1, -1)
        lo, hi = observe_range(rows, self.weight_bits, o["symmetric"], o["observer"], o["percentile"])
        scale, zero = _qparams(lo, hi, self.weight_bits, o["symmetric"])
        with torch.no_grad():
            self.weight_scale.copy_(scale)
            self.weight_zero.copy_(zero)

    # -- computing -----------------------------------------------------------------------------------------
    def quantized_weight(self) -> Tensor:
        w = self.layer.weight
        if self.weight_bits == 16:
            return w.half().float()
        if self.weight_bits == 32:
            return w
        axis = 0 if self.options["per_channel"] else None
        qmin, qmax = int_range(self.weight_bits, self.options["symmetric"])
        per_scale = w.numel() // self.weight_scale.numel()
        return lsq_quantize(w, self.weight_scale, self.weight_zero, qmin, qmax, axis, (per_scale * qmax) ** -0.5)

    def quantize_input(self, x: Tensor) -> Tensor:
        if self._observing is not None:  # calibrate_activations: extremes, and a sample for the other observers
            flat = x.detach().flatten()
            gen = torch.Generator(device=flat.device).manual_seed(len(self._observing))
            keep = (
                flat
                if flat.numel() <= _SAMPLE_PER_BATCH
                else flat[torch.randint(flat.numel(), (_SAMPLE_PER_BATCH,), generator=gen, device=flat.device)]
            )
            self._observing.append((flat.min(), flat.max(), keep.float()))
            return x
        if self.act_bits == 16:
            return x.half().float()
        if self.act_bits == 32 or not bool(self.act_ready):
            return x
        qmin, qmax = int_range(self.act_bits, False)
        features = x[0].numel() if x.dim() > 1 else x.numel()
        return lsq_quantize(x, self.act_scale, self.act_zero, qmin, qmax, None, (features * qmax) ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_forward(self.quantize_input(x), self.quantized_weight())

    def effective_weight(self) -> Tensor:
        return self.quantized_weight()

    def weight_codes(self) -> Tensor:
        """The integer codes of the weights (int64), for integer weight bits."""
        if self.weight_bits not in INT_BITS:
            raise ValueError(f"weights at {self.weight_bits} bits have no integer codes")
        axis = 0 if self.options["per_channel"] else None
        w = self.layer.weight.detach()
        return codes_of(w, self.weight_scale, self.weight_zero, self.weight_bits, self.options["symmetric"], axis)

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, {self.options}"

    # -- compact storage -----------------------------------------------------------------------------------
    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        """Integer weights as their codes packed at ``weight_bits`` bits; half weights as float16."""
        if self.weight_bits == 32:
            return state, None
        packed = {k: v for k, v in state.items() if k != "layer.weight"}
        if self.weight_bits == 16:
            packed["weight_half"] = state["layer.weight"].half()
            return packed, "half"
        qmin, _ = int_range(self.weight_bits, self.options["symmetric"])
        packed["weight_codes"] = pack_codes(self.weight_codes(), self.weight_bits, qmin)
        packed["code_format"] = torch.tensor([self.weight_bits, qmin], dtype=torch.int32)  # width, offset
        return packed, PACKED_FORMAT

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        state = {k: v for k, v in packed.items() if k not in ("weight_codes", "weight_half", "code_format")}
        shape = spec.dense(device="meta").weight.shape
        if fmt == "half":
            state["layer.weight"] = packed["weight_half"].float()
            return state
        if fmt != PACKED_FORMAT:
            return super().unpack_state(packed, fmt, spec)
        bits, qmin = (int(v) for v in packed["code_format"])
        codes = unpack_codes(packed["weight_codes"], bits, qmin, math.prod(shape)).view(shape)
        scale, zero = packed["weight_scale"].float(), packed["weight_zero"].long()
        view = [-1] + [1] * (len(shape) - 1) if scale.numel() > 1 else [1] * len(shape)
        state["layer.weight"] = ((codes - zero.view(view)).float() * scale.view(view)).float()
        return state


@torch.no_grad()
def calibrate_activations(model: nn.Module, inputs: Tensor, batch_size: int = 128) -> list[str]:
    """Set the activation ranges of every :class:`QuantizedLayer` of ``model`` that quantizes its inputs, from
    their inputs on ``inputs`` (each layer's observer; inputs seen with the weights already quantized and the
    earlier layers' activations not yet quantized). Returns the names of the layers calibrated."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer) and m.act_bits in INT_BITS]
    if not layers:
        return []
    was = model.training
    model.eval()
    for _, m in layers:
        m._observing = []
    try:
        for chunk in inputs.split(batch_size):
            model(chunk)
        seen = {n: m._observing for n, m in layers}
    finally:
        for _, m in layers:
            m._observing = None
        model.train(was)
    for name, m in layers:
        if not seen[name]:
            raise ValueError(f"layer {name!r} saw no input during activation calibration (is it used?)")
        lo, hi = min(o[0] for o in seen[name]), max(o[1] for o in seen[name])
        values = torch.cat([o[2] for o in seen[name]])
        o = m.options
        if o["observer"] == "minmax":  # the extremes of every value seen, not only of the sample
            lo, hi = lo.reshape(1), hi.reshape(1)
        else:
            lo, hi = observe_range(values.reshape(1, -1), m.act_bits, False, o["observer"], o["percentile"])
        scale, zero = _qparams(lo, hi, m.act_bits, False)
        m.act_scale.copy_(scale)
        m.act_zero.copy_(zero)
        m.act_ready.fill_(True)
    return [n for n, _ in layers]
