"""Operator-level MAC counting: torch's ``FlopCounterMode`` plus formulas for kernels it misses.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of ``mm``,
``addmm``, ``bmm``, ``baddbmm``, ``_scaled_mm``, convolutions (any groups, stride, dilation, padding,
transposed) and the CUDA scaled-dot-product-attention kernels, ignoring bias additions; every other
operator counts 0. So ``MACs = FLOPs / 2`` and a layer built from those operators (a factorized layer
included) is counted without registering anything.

As of torch 2.13 it counts 0 for a few kernels that PyTorch picks on the CPU or for vectors; the
formulas below fill those in (same convention: 2 FLOPs per MAC, bias ignored):

* ``mv``, ``addmv``, ``dot``, ``vdot`` (``matmul`` with a 1-D operand), ``addbmm``;
* ``_scaled_dot_product_flash_attention_for_cpu`` (``F.scaled_dot_product_attention`` on the CPU):
  ``Q K^T`` and ``P V``, i.e. ``batch * L * S * (E + Ev)`` MACs, softmax not counted;
* ``_native_multi_head_attention`` (the inference fast path of ``nn.MultiheadAttention``): the q, k,
  v and output projections plus the two attention products;
* ``mkldnn_rnn_layer`` (``nn.LSTM`` on the CPU) and ``_cudnn_rnn`` (RNNs on CUDA): every weight matrix
  is applied once per token.

Still 0: element-wise operators, normalization, pooling, embeddings, ``nn.Bilinear``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import torch

Shape = Sequence[int]


def _mv_flop(mat: Shape, vec: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    m, n = mat
    return 2 * m * n


def _addmv_flop(bias: Shape, mat: Shape, vec: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _mv_flop(mat, vec)


def _dot_flop(a: Shape, b: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * a[0]


def _addbmm_flop(bias: Shape, a: Shape, b: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    batch, m, k = a
    n = b[-1]
    return 2 * batch * m * k * n


def _cpu_sdpa_flop(query: Shape, key: Shape, value: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    batch = prod(query[:-2])
    length, dim = query[-2:]
    source = key[-2]
    return 2 * batch * length * source * (dim + value[-1])


def _native_mha_flop(
    query: Shape, key: Shape, value: Shape, embed_dim: int, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    batch = prod(query[:-2])
    length, source = query[-2], key[-2]
    projections = (2 * length + 2 * source) * embed_dim * embed_dim  # q, out: L rows; k, v: S rows
    attention = 2 * length * source * embed_dim  # Q K^T and P V summed over heads
    return 2 * batch * (projections + attention)


def _mkldnn_rnn_layer_flop(x: Shape, w_ih: Shape, w_hh: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * prod(x[:-1]) * (prod(w_ih) + prod(w_hh))


def _cudnn_rnn_flop(x: Shape, weights: Sequence[Shape], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * prod(x[:-1]) * sum(prod(w) for w in weights if len(w) == 2)


_EXTRA: dict[str, Callable[..., int]] = {
    "mv": _mv_flop,
    "addmv": _addmv_flop,
    "dot": _dot_flop,
    "vdot": _dot_flop,
    "addbmm": _addbmm_flop,
    "_scaled_dot_product_flash_attention_for_cpu": _cpu_sdpa_flop,
    "_native_multi_head_attention": _native_mha_flop,
    "mkldnn_rnn_layer": _mkldnn_rnn_layer_flop,
    "_cudnn_rnn": _cudnn_rnn_flop,
}


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """``custom_mapping`` for ``FlopCounterMode``: the formulas above for the operators this torch has."""
    return {getattr(torch.ops.aten, name): f for name, f in _EXTRA.items() if hasattr(torch.ops.aten, name)}


def op_name(op: Any) -> str:
    """``aten.convolution`` for the overload packet ``torch.ops.aten.convolution``."""
    return str(op)
