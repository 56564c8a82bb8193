"""JSON-able descriptions of the dense layers that factorized layers replace, and conv builders."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d}


def _tuple(value, dim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dim


class _JsonSpec:
    """JSON round trip and the torch dtype, shared by every spec."""

    dtype: str

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class ConvSpec(_JsonSpec):
    """Every attribute of an ``nn.Conv1d``/``nn.Conv2d`` needed to rebuild it or a factorized stand-in."""

    dim: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    padding_mode: str
    dtype: str = "float32"

    @classmethod
    def from_module(cls, conv: nn.Module) -> ConvSpec:
        if type(conv) not in (nn.Conv1d, nn.Conv2d):
            raise TypeError(f"expected nn.Conv1d or nn.Conv2d, got {type(conv).__name__}")
        dim = 1 if isinstance(conv, nn.Conv1d) else 2
        padding = conv.padding if isinstance(conv.padding, str) else _tuple(conv.padding, dim)
        return cls(
            dim,
            conv.in_channels,
            conv.out_channels,
            _tuple(conv.kernel_size, dim),
            _tuple(conv.stride, dim),
            padding,
            _tuple(conv.dilation, dim),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            str(conv.weight.dtype).removeprefix("torch."),
        )

    @classmethod
    def from_dict(cls, d: dict) -> ConvSpec:
        d = dict(d)
        for key in ("kernel_size", "stride", "dilation"):
            d[key] = tuple(d[key])
        if not isinstance(d["padding"], str):
            d["padding"] = tuple(d["padding"])
        return cls(**d)

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def kernel_numel(self) -> int:
        n = 1
        for k in self.kernel_size:
            n *= k
        return n

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def dense(self, device=None) -> nn.Module:
        """A fresh dense conv with these attributes."""
        return CONV_TYPES[self.dim](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias,
            self.padding_mode,
            device=device,
            dtype=self.torch_dtype,
        )

    def full(self, cin: int, cout: int, groups: int, bias: bool, device=None) -> nn.Module:
        """A conv with this layer's kernel size, stride, padding, dilation and padding mode."""
        return CONV_TYPES[self.dim](
            cin,
            cout,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            groups,
            bias,
            self.padding_mode,
            device=device,
            dtype=self.torch_dtype,
        )

    def pointwise(self, cin: int, cout: int, groups: int, bias: bool, device=None) -> nn.Module:
        """A 1x1 conv (stride 1, no padding): commutes with every padding mode when it has no bias."""
        return CONV_TYPES[self.dim](cin, cout, 1, groups=groups, bias=bias, device=device, dtype=self.torch_dtype)

    def along_axis(self, axis: int, cin: int, cout: int, groups: int, bias: bool, device=None) -> nn.Module:
        """A 2-D conv that acts along one spatial ``axis`` only (0: a ``kh x 1`` conv, 1: a ``1 x kw`` conv).

        It carries that axis's stride, dilation and padding (with the layer's padding mode); the other axis
        is untouched. A ``kh x 1`` conv followed by a ``1 x kw`` conv pads exactly as the ``kh x kw`` conv
        does, for every padding mode, because each mode pads the two axes independently.
        """
        if self.dim != 2:
            raise ValueError("along_axis needs a 2-D convolution")
        keep = lambda t, other: tuple(t[i] if i == axis else other for i in range(2))  # noqa: E731
        padding = self.padding if isinstance(self.padding, str) else keep(self.padding, 0)
        return nn.Conv2d(
            cin,
            cout,
            keep(self.kernel_size, 1),
            keep(self.stride, 1),
            padding,
            keep(self.dilation, 1),
            groups,
            bias,
            self.padding_mode,
            device=device,
            dtype=self.torch_dtype,
        )

    def output_size(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output size for a spatial ``input_size``."""
        out = []
        for i, n in enumerate(input_size):
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            if self.padding == "same":
                out.append(n)
                continue
            p = 0 if self.padding == "valid" else 2 * self.padding[i]
            out.append((n + p - d * (k - 1) - 1) // s + 1)
        return tuple(out)


@dataclass(frozen=True)
class LinearSpec(_JsonSpec):
    in_features: int
    out_features: int
    bias: bool
    dtype: str = "float32"

    @classmethod
    def from_module(cls, linear: nn.Module) -> LinearSpec:
        if type(linear) is not nn.Linear:
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        return cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            str(linear.weight.dtype).removeprefix("torch."),
        )

    def dense(self, device=None) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, self.bias, device=device, dtype=self.torch_dtype)


@dataclass(frozen=True)
class EmbeddingSpec(_JsonSpec):
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    dtype: str = "float32"

    @classmethod
    def from_module(cls, emb: nn.Module) -> EmbeddingSpec:
        if type(emb) is not nn.Embedding:
            raise TypeError(f"expected nn.Embedding, got {type(emb).__name__}")
        if emb.max_norm is not None or emb.sparse:
            raise TypeError("nn.Embedding with max_norm or sparse=True cannot be factorized")
        return cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, str(emb.weight.dtype).removeprefix("torch."))

    def dense(self, device=None) -> nn.Embedding:
        return nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, device=device, dtype=self.torch_dtype
        )


def spec_of(layer: nn.Module) -> ConvSpec | LinearSpec | EmbeddingSpec:
    """The spec of a dense layer, or ``TypeError`` naming the supported types."""
    if type(layer) in (nn.Conv1d, nn.Conv2d):
        return ConvSpec.from_module(layer)
    if type(layer) is nn.Linear:
        return LinearSpec.from_module(layer)
    if type(layer) is nn.Embedding:
        return EmbeddingSpec.from_module(layer)
    raise TypeError(
        f"{type(layer).__name__} is not a layer factorch factorizes (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)"
    )


def spec_from_dict(d: dict) -> ConvSpec | LinearSpec | EmbeddingSpec:
    kind = d.get("kind")
    body = {k: v for k, v in d.items() if k != "kind"}
    types = {"conv": ConvSpec, "linear": LinearSpec, "embedding": EmbeddingSpec}
    if kind not in types:
        raise ValueError(f"unknown layer spec kind {kind!r}")
    return types[kind].from_dict(body)


def spec_to_dict(spec: ConvSpec | LinearSpec | EmbeddingSpec) -> dict:
    kind = {ConvSpec: "conv", LinearSpec: "linear", EmbeddingSpec: "embedding"}[type(spec)]
    return {"kind": kind, **spec.to_dict()}
