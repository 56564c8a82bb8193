"""Versioned, JSON-serialisable configs: one per method, and :class:`Plan` for per-layer choices."""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from factorch.calibrate.config import as_calibration
from factorch.rank import RankSelector, as_selector
from factorch.registry import config_class, config_class_named

CONFIG_VERSION = 1


@dataclass
class MethodConfig:
    """The base of every per-layer method config (factorization, pruning, ...).

    Attributes:
        fold_bn: fold a BatchNorm that directly follows a conv into the conv before compressing (acts on the
            whole model; ``compress(..., fold_bn=True)`` says so at the model level).
        calibrate: a :class:`~factorch.CalibrationConfig` (or a number of samples): after compressing, refit
            the layers to the dense network's responses on ``calib_data`` (see ``factorch.compress``).

    Subclasses set ``method`` (the registry name) and ``option_field``: the field that holds the per-layer
    option handed to the layer class's ``from_dense`` (``rank`` for factorizations, ``sparsity`` for pruning);
    every other field of their own is a method option.
    """

    fold_bn: bool = False
    calibrate: Any = None
    method: ClassVar[str] = ""
    option_field: ClassVar[str] = "rank"
    _common: ClassVar[frozenset[str]] = frozenset({"fold_bn", "calibrate", "allow_larger"})

    def __post_init__(self) -> None:
        self.calibrate = as_calibration(self.calibrate)
        if not isinstance(self.fold_bn, bool):
            raise TypeError(f"{type(self).__name__}(fold_bn=...) must be a bool, got {self.fold_bn!r}")

    @property
    def option(self) -> Any:
        """The per-layer option (a rank, a sparsity...) given to the layer class's ``from_dense``."""
        return getattr(self, self.option_field)

    def with_option(self, value: Any) -> MethodConfig:
        """A copy of this config with another per-layer option."""
        return dataclasses.replace(self, **{self.option_field: value})

    def options(self) -> dict[str, Any]:
        """Method-specific options passed to the layer class."""
        skip = {*self._common, self.option_field}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    keeps_pruned_zeros: ClassVar[bool] = False  # compresses pruned layers as dense ones holding their zeros

    @property
    def uses_calib_data(self) -> bool:
        """Whether building this config's layers reads ``calib_data`` (beyond ``calibrate``)."""
        return False

    def _json_value(self, name: str, value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: self._json_value(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}
        body["calibrate"] = None if self.calibrate is None else self.calibrate.to_dict()
        return {"type": type(self).__name__, "version": CONFIG_VERSION, **body}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> MethodConfig:
        """The config that :meth:`to_dict` wrote, of any registered method."""
        data = dict(data)
        name = data.pop("type", None)
        version = data.pop("version", CONFIG_VERSION)
        cls = config_class_named(name)
        if version > CONFIG_VERSION:
            raise ValueError(f"{name} version {version} is newer than this factorch understands ({CONFIG_VERSION})")
        return cls(**cls._from_json(data))

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data


@dataclass
class FactorizationConfig(MethodConfig):
    """Options shared by the factorization methods.

    Attributes:
        rank: int or per-mode tuple, fraction of full rank in (0, 1] (1.0 = full), ``"vbmf"``,
            ``"energy:0.95"``, ``"params:0.25"``, ``"macs:0.33"``, or a selector from :mod:`factorch.rank`.
        allow_larger: keep a factorized layer even when it is not smaller (params and MACs) than the dense one.
    """

    rank: Any = "vbmf"
    allow_larger: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        as_selector(self.rank)  # validate early, with the selector's message
        if not isinstance(self.allow_larger, bool):
            raise TypeError(f"allow_larger must be a bool, got {self.allow_larger!r}")

    def _json_value(self, name: str, value: Any) -> Any:
        if name == "rank" and isinstance(value, RankSelector):
            value = value.to_json()
        return super()._json_value(name, value)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("rank"), list):
            data["rank"] = tuple(data["rank"])
        return data


@dataclass
class SVDConfig(FactorizationConfig):
    """Truncated SVD: Linear -> rank r -> Linear; convs: k x k conv to r channels then 1x1."""

    method: ClassVar[str] = "svd"


@dataclass
class SpatialSVDConfig(FactorizationConfig):
    """Spatial SVD (Jaderberg et al. 2014): k_h x 1 conv to r channels, then 1 x k_w conv."""

    method: ClassVar[str] = "spatial-svd"


@dataclass
class Tucker2Config(FactorizationConfig):
    """Tucker-2 (Kim et al. 2016): 1x1 -> k x k core -> 1x1, ranks (R_out, R_in)."""

    n_iter_max: int = 100
    method: ClassVar[str] = "tucker2"


@dataclass
class CPConfig(FactorizationConfig):
    """CP (Lebedev et al. 2015), stabilised: form "4" (1x1, k x 1, 1 x k, 1x1) or "3" (1x1, k x k dw, 1x1)."""

    form: str = "4"
    n_iter_max: int = 200
    stabilize: bool = True
    seed: int = 0
    method: ClassVar[str] = "cp"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.form = str(self.form)
        if self.form not in ("4", "3"):
            raise ValueError(f"CPConfig(form=...) must be '4' or '3', got {self.form!r}")


@dataclass
class TTConfig(FactorizationConfig):
    """Tensor-train matrix format for Linear and Embedding layers (Novikov et al. 2015).

    Attributes:
        n_cores: number of TT cores when the dimension factorisations are automatic.
        row_dims / col_dims: explicit factorisations of the output / input dimension.
    """

    n_cores: int = 3
    row_dims: tuple[int, ...] | None = None
    col_dims: tuple[int, ...] | None = None
    method: ClassVar[str] = "tt"


PRUNE_SCOPES = ("global", "layer")
PRUNE_CRITERIA = ("magnitude",)


@dataclass
class PruneConfig(MethodConfig):
    """Unstructured weight pruning (Han et al. 2015): the smallest-magnitude weights are set to zero and held
    there by a fixed mask (fine-tuning never revives them).

    Attributes:
        sparsity: the share of weights removed, in [0, 1) (0.9: one weight in ten is kept); or an int, the
            number of weights kept in each layer.
        scope: ``"global"``: one magnitude threshold across every layer the config applies to, so layers with
            many small weights lose more (Han et al.); ``"layer"``: each layer loses ``sparsity`` of its own.
        criterion: ``"magnitude"`` (|w|).

    The pruned layer keeps its dense shape (a dense kernel still executes the zeros, so MACs stay) and is
    saved compactly by ``factorch.save``: its non-zero values plus a 1-bit mask.

    References:
        Han et al. 2015, "Learning both weights and connections for efficient neural networks".
    """

    sparsity: Any = 0.5
    scope: str = "layer"
    criterion: str = "magnitude"
    method: ClassVar[str] = "prune"
    option_field: ClassVar[str] = "sparsity"

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise TypeError(f"PruneConfig(sparsity=...) must be a number in [0, 1) or an int count kept, got {s!r}")
        if isinstance(s, numbers.Integral):
            if s < 1:
                raise ValueError(f"PruneConfig(sparsity=...) as a count of weights kept must be >= 1, got {s}")
        elif not 0 <= s < 1:
            raise ValueError(f"PruneConfig(sparsity=...) must be in [0, 1) (the share removed), got {s}")
        if self.scope not in PRUNE_SCOPES:
            raise ValueError(f"PruneConfig(scope=...) must be one of {', '.join(PRUNE_SCOPES)}, got {self.scope!r}")
        if self.criterion not in PRUNE_CRITERIA:
            raise ValueError(
                f"PruneConfig(criterion=...) must be one of {', '.join(PRUNE_CRITERIA)}, got {self.criterion!r}"
            )

    def options(self) -> dict[str, Any]:
        return {"criterion": self.criterion}  # scope acts across layers (factorch.apply), not inside one


@dataclass
class QuantConfig(MethodConfig):
    """Uniform quantization of weights and input activations, executed as fake quantization in torch
    (post-training: scales from the weights and from ``calib_data``; then trainable with ``factorch.finetune``,
    the straight-through estimator passing gradients through the rounding).

    Attributes:
        weight_bits: 2..8 (integer codes), 16 (half precision) or 32 (float32); or a pair
            ``(weight_bits, act_bits)`` (the per-layer option).
        act_bits: bits of each quantized layer's input activations: 2..8 (affine, one scale and zero point per
            tensor, set from ``calib_data``), 16 (half) or 32 (not quantized: weights only).
        per_channel: one weight scale per output channel (else one per tensor).
        symmetric: weights on a signed grid symmetric around 0 (zero point 0); else affine (unsigned + zero point).
        observer: how ranges are chosen: ``"minmax"`` (the extremes), ``"percentile"`` (clip at the
            ``percentile``-th percentile), ``"mse"`` (the clipping with the least squared quantization error).
        percentile: for ``observer="percentile"``.
        calib_samples: calibration inputs used to set the activation ranges.
        learn_scale: train the weight and activation step sizes with the weights during ``finetune`` (LSQ,
            Esser et al. 2020); ``None``: at 4 bits or fewer. The observers' scales are the starting point.

    References:
        Jacob et al. 2018; Krishnamoorthi 2018 (the whitepaper: per-channel symmetric weights, affine
        activations); Esser et al. 2020, "Learned step size quantization".
    """

    weight_bits: Any = 8
    act_bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    percentile: float = 99.99
    calib_samples: int = 512
    learn_scale: bool | None = None
    method: ClassVar[str] = "quant"
    option_field: ClassVar[str] = "weight_bits"

    def __post_init__(self) -> None:
        from factorch.layers.quantized import OBSERVERS, check_bits

        super().__post_init__()
        if isinstance(self.weight_bits, (tuple, list)):
            if len(self.weight_bits) != 2:
                raise ValueError(
                    f"QuantConfig(weight_bits=...) as a pair is (weight_bits, act_bits), got {self.weight_bits!r}"
                )
            self.weight_bits, self.act_bits = self.weight_bits
        self.weight_bits = check_bits(self.weight_bits, "QuantConfig(weight_bits=...)")
        self.act_bits = check_bits(self.act_bits, "QuantConfig(act_bits=...)")
        if self.weight_bits == 32 and self.act_bits == 32:
            raise ValueError("QuantConfig(weight_bits=32, act_bits=32) quantizes nothing")
        if self.observer not in OBSERVERS:
            raise ValueError(f"QuantConfig(observer=...) must be one of {', '.join(OBSERVERS)}, got {self.observer!r}")
        for name in ("per_channel", "symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QuantConfig({name}=...) must be a bool, got {getattr(self, name)!r}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 50 < p <= 100:
            raise ValueError(f"QuantConfig(percentile=...) must be in (50, 100], got {p!r}")
        n = self.calib_samples
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"QuantConfig(calib_samples=...) must be an int >= 1, got {n!r}")
        if self.learn_scale is not None and not isinstance(self.learn_scale, bool):
            raise TypeError(f"QuantConfig(learn_scale=...) must be a bool or None, got {self.learn_scale!r}")

    @property
    def uses_calib_data(self) -> bool:
        return 2 <= self.act_bits <= 8

    def options(self) -> dict[str, Any]:
        return {
            "act_bits": self.act_bits,
            "per_channel": self.per_channel,
            "symmetric": self.symmetric,
            "observer": self.observer,
            "percentile": self.percentile,
            "learn_scale": self.learn_scale
            if self.learn_scale is not None
            else min(self.weight_bits, self.act_bits) <= 4,
        }


@dataclass
class BinaryConfig(MethodConfig):
    """Binary weights, 1 bit each, trained through ``factorch.finetune`` (the real weights kept for the updates).

    Attributes:
        mode: ``"binaryconnect"`` (deterministic signs; Courbariaux et al. 2015), ``"bwn"`` (signs times a
            per-filter ``alpha = mean |W|``; Rastegari et al. 2016) or ``"xnor"`` (``bwn`` with the inputs
            binarised too, rescaled by XNOR-Net's ``beta``).
        weight_bits: 1 (the per-layer option; nothing else is allowed).

    The first conv and the final classifier stay real-valued by default, as in both papers. A binary network
    needs fine-tuning: straight after binarisation its accuracy is near chance.
    """

    mode: str = "bwn"
    weight_bits: int = 1
    method: ClassVar[str] = "binary"
    option_field: ClassVar[str] = "weight_bits"

    def __post_init__(self) -> None:
        from factorch.layers.binary import BINARY_MODES

        super().__post_init__()
        if self.mode not in BINARY_MODES:
            raise ValueError(f"BinaryConfig(mode=...) must be one of {', '.join(BINARY_MODES)}, got {self.mode!r}")
        if self.weight_bits != 1 or isinstance(self.weight_bits, bool):
            raise ValueError(f"BinaryConfig(weight_bits=...) is 1 (one bit per weight), got {self.weight_bits!r}")


@dataclass
class SALConfig(MethodConfig):
    """Shift Attention Layers (Hacene et al. 2019): each 2-D ``k x k`` conv becomes a
    :class:`factorch.nn.ShiftAttentionConv2d` initialised from its kernel; ``factorch.finetune`` then moves it,
    on the layer's attention schedule, to exactly ``keep`` weights per ``(output, input)`` kernel slice, after
    which each layer runs as shift + 1x1 conv (``layer.to_shift()``).

    Attributes:
        keep: weights kept per kernel slice (1: SAL, 2: SAL2).
        ramp: fraction of fine-tuning over which each layer moves from the dense conv to the binarised one.
        position_groups: ``None`` (the paper's layer): every ``(output, input)`` slice has its own positions;
            ``G``: each layer's outputs form ``G`` groups sharing their positions per input channel (``1``: a
            learned shift per input channel, whose executed form runs faster than the dense conv on CPUs; a
            layer whose ``out_channels`` ``G`` does not divide is skipped with that reason).

    The first conv and the final classifier stay dense by default (name them in a Plan to convert them).
    """

    keep: int = 1
    ramp: float = 0.75
    position_groups: int | None = None
    method: ClassVar[str] = "sal"
    option_field: ClassVar[str] = "keep"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"SALConfig(keep=...) must be a positive int (1: SAL, 2: SAL2), got {self.keep!r}")
        if not 0.0 < self.ramp <= 1.0:
            raise ValueError(f"SALConfig(ramp=...) must be in (0, 1], got {self.ramp!r}")
        g = self.position_groups
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise ValueError(f"SALConfig(position_groups=...) must be None or a positive int, got {g!r}")


@dataclass
class KMeansConfig(MethodConfig):
    """Weight sharing: each layer's weights clustered by 1-D k-means into ``2**bits`` shared values (Deep
    Compression's second stage; linear centroid initialisation, as the paper recommends). Weights that are
    exactly zero (pruned) stay zero and are not clustered. The centroids are trained by ``factorch.finetune``
    (the gradients of each cluster's weights summed into its centroid, divided by the cluster's size).

    Attributes:
        bits: bits per index (1..8), or ``"elbow"``: per layer, the bit width at the elbow of the k-means
            distortion curve (:func:`factorch.layers.shared.elbow_bits`).
    """

    bits: Any = 4
    method: ClassVar[str] = "kmeans"
    keeps_pruned_zeros: ClassVar[bool] = True
    option_field: ClassVar[str] = "bits"

    def __post_init__(self) -> None:
        super().__post_init__()
        b = self.bits
        if b != "elbow" and (isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= 8):
            raise ValueError(f"KMeansConfig(bits=...) must be an int in 1..8 or 'elbow', got {b!r}")


@dataclass
class PQConfig(MethodConfig):
    """Product quantization of the weights (Gong et al. 2014): subvectors of ``subvector`` consecutive input
    weights (per output channel and kernel position) each replaced by one of ``2**bits`` codewords of a
    per-layer codebook (k-means), trained by ``factorch.finetune``.

    Attributes:
        subvector: weights per subvector (must divide each layer's inputs per output; layers where it does
            not are skipped with the reason).
        bits: bits per code (the codebook has ``2**bits`` codewords).
    """

    subvector: int = 4
    bits: int = 8
    method: ClassVar[str] = "pq"
    option_field: ClassVar[str] = "bits"
    stages: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, hi in (("subvector", self.subvector, 1 << 16), ("bits", self.bits, 12)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= hi:
                raise ValueError(f"{type(self).__name__}({name}=...) must be an int in 1..{hi}, got {value!r}")

    @property
    def option(self) -> Any:
        return (self.subvector, self.bits, self.stages)

    def with_option(self, value: Any) -> MethodConfig:
        d, bits, *_ = value
        return dataclasses.replace(self, subvector=d, bits=bits)

    def options(self) -> dict[str, Any]:
        return {}


@dataclass
class RQConfig(PQConfig):
    """Residual quantization (Gong et al. 2014): like :class:`PQConfig`, each subvector the sum of ``stages``
    codewords, every stage's codebook fitted to what the stages before it left."""

    stages: int = 2  # type: ignore[misc]
    method: ClassVar[str] = "rq"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.stages, bool) or not isinstance(self.stages, numbers.Integral) or not 1 <= self.stages <= 8:
            raise ValueError(f"RQConfig(stages=...) must be an int in 1..8, got {self.stages!r}")

    def with_option(self, value: Any) -> MethodConfig:
        d, bits, stages = value
        return dataclasses.replace(self, subvector=d, bits=bits, stages=stages)


@dataclass
class Plan:
    """Per-layer configs keyed by module name.

    Keys are exact module names, ``"re:<regex>"`` patterns (full match) or ``"_default"``. Resolution:
    exact name > first matching pattern (in order) > ``_default``; a value of ``None`` leaves the layer
    dense. A layer named exactly is compressed even if it is the first conv or the classifier. Without
    ``_default``, layers named by no key stay dense.
    """

    layers: dict[str, MethodConfig | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, dict):
            raise TypeError(f"Plan takes a dict of module name -> config, got {type(self.layers).__name__}")
        self._patterns = []
        for key, cfg in self.layers.items():
            if cfg is not None and not isinstance(cfg, MethodConfig):
                raise TypeError(f"Plan[{key!r}] must be a method config or None, got {type(cfg).__name__}")
            if key.startswith("re:"):
                try:
                    self._patterns.append((key, re.compile(key[3:])))
                except re.error as err:
                    raise ValueError(f"Plan key {key!r} is not a valid regular expression: {err}") from err

    def patterns(self) -> list[tuple[str, re.Pattern]]:
        """The ``re:`` keys and their compiled patterns, in order."""
        return list(self._patterns)

    @property
    def default(self) -> MethodConfig | None:
        return self.layers.get("_default")

    def exact_names(self) -> list[str]:
        return [k for k in self.layers if k != "_default" and not k.startswith("re:")]

    def resolve(self, name: str) -> tuple[MethodConfig | None, str | None]:
        """``(config, key that decided)``; key is None when nothing matched and there is no default."""
        if name in self.layers and name != "_default":
            return self.layers[name], name
        for key, pattern in self._patterns:
            if pattern.fullmatch(name):
                return self.layers[key], key
        if "_default" in self.layers:
            return self.layers["_default"], "_default"
        return None, None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "Plan",
            "version": CONFIG_VERSION,
            "layers": {k: (None if v is None else v.to_dict()) for k, v in self.layers.items()},
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Plan:
        return Plan({k: (None if v is None else MethodConfig.from_dict(v)) for k, v in data["layers"].items()})


def config_for_method(method: str, **kwargs) -> MethodConfig:
    """``config_for_method("tucker2", rank=0.5)`` -> ``Tucker2Config(rank=0.5)`` (any registered method)."""
    return config_class(method)(**kwargs)
