"""Shift convolutions: a spatial shift per channel (a memory move, no multiplication) then a 1x1 conv.

* :class:`ShiftConv2d` (Wu et al. 2018, "Shift: A Zero FLOP, Zero Parameter Alternative to Spatial
  Convolutions"): each input channel is shifted by one fixed offset of the ``k x k`` grid (the channels spread
  evenly over the offsets), then a 1x1 conv mixes them. It is also the executed form of a Shift Attention Layer,
  where one input channel may feed several shifted copies (``sources`` / ``positions``).
* :class:`ShiftAttentionConv2d` (SAL, Hacene et al. 2019, arXiv 1905.12300): a ``k x k`` conv whose every
  ``(output, input)`` kernel slice learns an attention over its ``k*k`` positions; training ends with the
  attention binarised, so exactly ``keep`` weights per slice remain (1: SAL, 2: SAL2), and
  :meth:`ShiftAttentionConv2d.to_shift` rewrites the layer as shift + 1x1 conv. With ``position_groups=G``
  the outputs form ``G`` contiguous groups that share their kept positions per input channel (factorch's
  extension, for speed on CPUs: see below).

The shift runs grouped by offset: the padded input is sliced once per offset used (a strided view, one slice
per group of channels sharing that offset) and the slices concatenated; no one-hot depthwise convolution.

The attention schedule (no reference code of SAL exists; this is factorch's design, tested in
``tests/nn/test_shift.py``): the layer computes with ``weight * mask`` where

    mask = (1 - lambda) + lambda * hard + (soft - soft.detach())

``hard`` is 1 at the ``keep`` positions of largest attention in each slice (ties: the lowest position), ``soft``
the softmax of the attention over the slice's positions. The last term is 0 in value and gives the attention
its gradient, ``dL/dmask * dsoft/dA`` (a position gains attention when its weight's use would lower the loss,
as in movement pruning) from the first step. ``lambda`` rises from 0 (the dense conv, initialised from the
trained kernel) to 1 (exactly the binarised layer) on Zhu & Gupta's cubic schedule over the first ``ramp``
fraction of training: ``lambda = 1 - (1 - min(1, progress / ramp))^3``; the rest of training adapts the kept
weights to the binarised layer. ``progress`` is set by ``factorch.finetune`` before every step through
:meth:`set_training_progress` (so a resumed run follows the same schedule); :meth:`binarize` sets it to 1.
The attention starts at ``|w| / mean |w|`` of each slice, so the first choice is the largest weight.

Speed of the executed form. With a position per ``(output, input)`` slice (the paper's layer), the outputs
use nearly every ``(input, position)`` pair between them, so the 1x1 conv reads about ``k*k * in`` shifted
channels: as many multiply-adds as the dense conv (most of them by zero), and on a CPU's dense kernels it runs
slower than the ``k x k`` conv it replaces (measured in ``benchmarks/zoo.py``); its gain is on hardware that
skips the zeros. ``position_groups=G`` shares the positions within ``G`` groups of outputs, so at most
``G * keep * in`` shifted channels exist; ``G=1`` is a learned shift per input channel (as Active Shift,
Jeon & Kim 2018, but with a discrete position): one shifted copy per input channel and a 1x1 conv,
``1/(k*k)`` of the dense MACs. The attention of a group is one ``(in, k*k)`` table, its gradient summed over
the group's outputs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def default_shifts(in_channels: int, kernel_size: tuple[int, int]) -> Tensor:
    """Wu et al.'s assignment: channel ``c`` takes kernel position ``c * k*k // in_channels`` (row-major), so
    the channels spread evenly over the offsets in contiguous groups."""
    kk = kernel_size[0] * kernel_size[1]
    return torch.arange(in_channels) * kk // in_channels


class ShiftConv2d(nn.Module):
    """Shift each channel by a fixed offset, then a 1x1 conv: the ``k x k`` conv whose kernel slice
    ``[o, c]`` is zero except at channel ``c``'s offset, computed without multiplying those zeros.

    Output size, padding (zeros) and stride are those of ``nn.Conv2d(in, out, kernel_size, stride, padding)``:
    the shifted copy of channel ``c`` at position ``(i, j)`` of the kernel is ``x_padded[c, i + s*y, j + s*x]``.

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: the grid of offsets (``k x k``).
        stride, padding: as the conv replaced; ``padding=None``: ``k // 2``.
        bias: a bias on the 1x1 conv.
        sources: input channel of each shifted channel (default: every channel once).
        positions: kernel position (row-major, ``i * kw + j``) of each shifted channel (default: Wu et al.'s
            even spread, :func:`default_shifts`). The shifted channels are stored sorted by position, and
            the 1x1 conv's input channels follow that order.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | None = None, bias: bool = True, *,
        sources: Tensor | None = None, positions: Tensor | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(self.kernel_size[0] // 2 if padding is None else padding)
        kk = self.kernel_size[0] * self.kernel_size[1]
        if sources is None:
            sources = torch.arange(in_channels)
        if positions is None:
            positions = default_shifts(in_channels, self.kernel_size)
        sources, positions = torch.as_tensor(sources).long(), torch.as_tensor(positions).long()
        if sources.shape != positions.shape or sources.dim() != 1 or sources.numel() == 0:
            raise ValueError("ShiftConv2d: sources and positions must be 1-D tensors of the same, non-zero length")
        if int(sources.min()) < 0 or int(sources.max()) >= in_channels:
            raise ValueError(f"ShiftConv2d: sources must be input channels in [0, {in_channels})")
        if int(positions.min()) < 0 or int(positions.max()) >= kk:
            raise ValueError(f"ShiftConv2d: positions must be kernel positions in [0, {kk})")
        order = torch.argsort(positions * in_channels + sources, stable=True)
        self.register_buffer("sources", sources[order].clone())
        self.register_buffer("positions", positions[order].clone())
        self.pointwise = nn.Conv2d(sources.numel(), out_channels, 1, bias=bias)
        self._groups: list[tuple[int, int, int, int | None]] = []
        self._index_groups()
        self.register_load_state_dict_post_hook(lambda module, keys: module._index_groups())

    def _index_groups(self) -> None:
        """``(position, start, stop, first source or None)`` per offset used: the shifted channels
        ``start:stop`` share that position; a contiguous run of sources is sliced, any other gathered."""
        pos, src = self.positions.tolist(), self.sources.tolist()
        groups, start = [], 0
        for k in range(1, len(pos) + 1):
            if k == len(pos) or pos[k] != pos[start]:
                run = src[start:k]
                contiguous = run == list(range(run[0], run[0] + len(run)))
                groups.append((pos[start], start, k, run[0] if contiguous else None))
                start = k
        self._groups = groups

    @property
    def shifted_channels(self) -> int:
        """Channels after the shift (the 1x1 conv's input)."""
        return self.sources.numel()

    def shift(self, x: Tensor) -> Tensor:
        """The shifted copies, ``(N, shifted_channels, H_out, W_out)``."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho = (x.shape[-2] + 2 * ph - kh) // sh + 1
        wo = (x.shape[-1] + 2 * pw - kw) // sw + 1
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        parts = []
        for position, start, stop, first in self._groups:
            i, j = divmod(position, kw)
            xs = (
                x[:, first : first + stop - start] if first is not None else x.index_select(1, self.sources[start:stop])
            )
            parts.append(xs[:, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.shift(x))

    def dense_weight(self) -> Tensor:
        """The equivalent ``k x k`` conv weight ``(out, in, kh, kw)``."""
        w = self.pointwise.weight[:, :, 0, 0]
        kh, kw = self.kernel_size
        dense = w.new_zeros(self.in_channels, kh * kw, self.out_channels)
        dense.index_put_((self.sources, self.positions), w.t(), accumulate=True)
        return dense.permute(2, 0, 1).reshape(self.out_channels, self.in_channels, kh, kw)

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense ``nn.Conv2d``."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         bias=self.pointwise.bias is not None).to(self.pointwise.weight)  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if conv.bias is not None:
                conv.bias.copy_(self.pointwise.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, shifted_channels={self.shifted_channels}"
        )


class ShiftAttentionConv2d(nn.Module):
    """A ``k x k`` conv with an attention over each kernel slice's positions, trained toward exactly ``keep``
    weights per ``(output, input)`` slice (see the module docstring for the schedule).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv2d`` (``padding=None``:
            ``k // 2``; zero padding, no dilation, no groups).
        keep: weights kept per kernel slice after binarisation (1: SAL; 2: SAL2).
        ramp: fraction of training over which the layer moves from the dense conv to the binarised one.
        position_groups: ``None`` (the paper's layer): each ``(output, input)`` slice has its own positions;
            ``G`` (dividing ``out_channels``): the outputs form ``G`` contiguous groups sharing their positions
            per input channel (``1``: one learned shift per input channel, the fastest executed form).

    Attributes:
        conv: the underlying conv; its weight holds the real-valued weights.
        attention: ``(G, in, k*k)`` logits (``G = out_channels`` when ``position_groups`` is ``None``).
        progress: training progress in ``[0, 1]`` (a buffer, saved with the model).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | None = None, bias: bool = True, *,
        keep: int = 1, ramp: float = 0.75, position_groups: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        ks = _pair(kernel_size)
        kk = ks[0] * ks[1]
        if not isinstance(keep, int) or not 1 <= keep <= kk:
            raise ValueError(f"ShiftAttentionConv2d: keep must be an int in [1, {kk}] (kernel {ks}), got {keep!r}")
        if not 0.0 < ramp <= 1.0:
            raise ValueError(f"ShiftAttentionConv2d: ramp must be in (0, 1], got {ramp!r}")
        if position_groups is not None and (
            isinstance(position_groups, bool) or not isinstance(position_groups, int) or position_groups < 1
            or out_channels % position_groups
        ):  # fmt: skip
            raise ValueError(
                f"ShiftAttentionConv2d: position_groups must be None or a positive int dividing out_channels "
                f"({out_channels}), got {position_groups!r}"
            )
        pad = _pair(ks[0] // 2 if padding is None else padding)
        self.conv = nn.Conv2d(in_channels, out_channels, ks, stride, pad, bias=bias)
        self.keep, self.ramp, self.position_groups = keep, float(ramp), position_groups
        groups = out_channels if position_groups is None else position_groups
        self.attention = nn.Parameter(torch.zeros(groups, in_channels, kk))
        self.register_buffer("progress", torch.zeros(()))
        self.reset_attention()

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, *, keep: int = 1, ramp: float = 0.75, position_groups: int | None = None
    ) -> ShiftAttentionConv2d:
        """A SAL layer starting from a trained conv (its weights copied; the conv is left untouched)."""
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "ShiftAttentionConv2d.from_conv: only convs with groups=1, dilation 1 and numeric zero padding, "
                f"got groups={conv.groups}, dilation={conv.dilation}, padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.bias is not None, keep=keep, ramp=ramp,
                  position_groups=position_groups).to(conv.weight)  # fmt: skip
        with torch.no_grad():
            new.conv.load_state_dict(conv.state_dict())
        new.reset_attention()
        return new

    @torch.no_grad()
    def reset_attention(self) -> None:
        """Attention logits ``|w| / mean |w|`` per slice (with ``position_groups``: ``|w|`` averaged over the
        group's outputs first): the largest weights are chosen first."""
        w = self.conv.weight.detach().abs().flatten(2)
        w = w.view(self.attention.shape[0], -1, *w.shape[1:]).mean(dim=1)
        self.attention.copy_(w / w.mean(dim=-1, keepdim=True).clamp_min(1e-12))

    def _per_output(self, t: Tensor) -> Tensor:
        """A ``(G, in, k*k)`` table of the groups as the ``(out, in, k*k)`` one of every output."""
        out = self.conv.out_channels
        return t if t.shape[0] == out else t.repeat_interleave(out // t.shape[0], dim=0)

    # -- the schedule ---------------------------------------------------------------------------------------
    def set_training_progress(self, fraction: float) -> None:
        """Called by ``factorch.finetune`` before each step with the fraction of training done."""
        self.progress.fill_(min(1.0, max(0.0, float(fraction))))

    def binarize(self) -> ShiftAttentionConv2d:
        """Compute with exactly ``keep`` weights per slice from now on (progress 1)."""
        self.progress.fill_(1.0)
        return self

    @torch.no_grad()
    def settle_attention(self) -> ShiftAttentionConv2d:
        """Set the logits of a binarised layer to its hard choice (1 at the kept positions, 0 elsewhere), so the
        choice survives low-precision storage: float16 rounding can tie close logits and move a kept position
        (with ``position_groups=1`` that moves a whole input channel's shift). The layer computes the same; a
        later fine-tuning starts its attention from the choice."""
        if self.hardness < 1.0:
            raise ValueError("settle_attention: the layer is not binarised yet (call binarize() or train to the end)")
        top = torch.argsort(-self.attention, dim=-1, stable=True)[..., : self.keep]
        self.attention.copy_(torch.zeros_like(self.attention).scatter_(-1, top, 1.0))
        return self

    @property
    def hardness(self) -> float:
        """``lambda``: 0 = the dense conv, 1 = the binarised layer."""
        t = min(1.0, float(self.progress) / self.ramp)
        return 1.0 - (1.0 - t) ** 3

    def hard_mask(self) -> Tensor:
        """``(out, in, k*k)``: 1 at the ``keep`` positions of largest attention of each slice (ties: the lowest
        position)."""
        top = torch.argsort(-self.attention.detach(), dim=-1, stable=True)[..., : self.keep]
        return self._per_output(torch.zeros_like(self.attention).scatter_(-1, top, 1.0))

    def mask(self) -> Tensor:
        lam = self.hardness
        hard = self.hard_mask()
        mask = hard if lam >= 1.0 else (1.0 - lam) + lam * hard
        if self.attention.requires_grad and torch.is_grad_enabled():
            soft = torch.softmax(self.attention, dim=-1)
            mask = mask + self._per_output(soft - soft.detach())
        return mask

    def effective_weight(self) -> Tensor:
        return self.conv.weight * self.mask().view_as(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.effective_weight(), self.conv.bias)

    # -- the executed form --------------------------------------------------------------------------------
    @torch.no_grad()
    def to_shift(self) -> ShiftConv2d:
        """The binarised layer as shift + 1x1 conv: one shifted copy per (input channel, position) some output
        uses (at most ``G * keep`` per input channel with ``position_groups=G``), the 1x1 conv holding each kept
        weight at its copy (zero elsewhere)."""
        hard = self.hard_mask().bool()
        used = hard.any(dim=0)  # (in, k*k)
        sources, positions = used.nonzero(as_tuple=True)
        fast = ShiftConv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size, self.conv.stride,
                           self.conv.padding, self.conv.bias is not None, sources=sources,
                           positions=positions).to(self.conv.weight)  # fmt: skip
        w = (self.conv.weight.flatten(2) * hard).detach()  # (out, in, k*k)
        fast.pointwise.weight.copy_(w[:, fast.sources, fast.positions].unsqueeze(-1).unsqueeze(-1))
        if self.conv.bias is not None:
            fast.pointwise.bias.copy_(self.conv.bias)
        return fast

    def extra_repr(self) -> str:
        groups = "" if self.position_groups is None else f", position_groups={self.position_groups}"
        return f"keep={self.keep}, ramp={self.ramp}{groups}, progress={float(self.progress):.3f}"


def to_shift_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every :class:`ShiftAttentionConv2d` replaced by its executed shift + 1x1 form
    (:meth:`ShiftAttentionConv2d.to_shift`; the outputs are those of the binarised layers)."""
    work = model if inplace else copy.deepcopy(model)
    for module in list(work.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ShiftAttentionConv2d):
                setattr(module, child_name, child.to_shift())
    return work
