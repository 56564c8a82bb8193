"""Versioned, JSON-serialisable configs: one per method, and :class:`Plan` for per-layer choices."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from factorch.calibrate.config import as_calibration
from factorch.rank import RankSelector, as_selector

CONFIG_VERSION = 1


@dataclass
class MethodConfig:
    """Options shared by every method.

    Attributes:
        rank: int or per-mode tuple, fraction of full rank in (0, 1] (1.0 = full), ``"vbmf"``,
            ``"energy:0.95"``, ``"params:0.25"``, ``"macs:0.33"``, or a selector from :mod:`factorch.rank`.
        allow_larger: keep a factorized layer even when it is not smaller (params and MACs) than the dense one.
        fold_bn: fold a BatchNorm that directly follows a conv into the conv before decomposing.
        calibrate: a :class:`~factorch.CalibrationConfig` (or a number of samples): after factorizing, refit
            the layers to the dense network's responses on ``calib_data`` (see ``factorch.compress``).
    """

    rank: Any = "vbmf"
    allow_larger: bool = False
    fold_bn: bool = False
    calibrate: Any = None
    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.calibrate = as_calibration(self.calibrate)
        as_selector(self.rank)  # validate early, with the selector's message
        if not isinstance(self.allow_larger, bool):
            raise TypeError(f"allow_larger must be a bool, got {self.allow_larger!r}")

    def options(self) -> dict[str, Any]:
        """Method-specific options passed to the layer class."""
        common = {f.name for f in dataclasses.fields(MethodConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in common}

    def to_dict(self) -> dict[str, Any]:
        rank = self.rank.to_json() if isinstance(self.rank, RankSelector) else self.rank
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        body["rank"] = list(rank) if isinstance(rank, tuple) else rank
        body["calibrate"] = None if self.calibrate is None else self.calibrate.to_dict()
        return {"type": type(self).__name__, "version": CONFIG_VERSION, **body}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> MethodConfig:
        data = dict(data)
        name = data.pop("type", None)
        version = data.pop("version", CONFIG_VERSION)
        if name not in CONFIGS:
            raise ValueError(f"unknown config type {name!r}; choose from {', '.join(CONFIGS)}")
        if version > CONFIG_VERSION:
            raise ValueError(f"{name} version {version} is newer than this factorch understands ({CONFIG_VERSION})")
        if isinstance(data.get("rank"), list):
            data["rank"] = tuple(data["rank"])
        return CONFIGS[name](**data)


@dataclass
class SVDConfig(MethodConfig):
    """Truncated SVD: Linear -> rank r -> Linear; convs: k x k conv to r channels then 1x1."""

    method: ClassVar[str] = "svd"


@dataclass
class SpatialSVDConfig(MethodConfig):
    """Spatial SVD (Jaderberg et al. 2014): k_h x 1 conv to r channels, then 1 x k_w conv."""

    method: ClassVar[str] = "spatial-svd"


@dataclass
class Tucker2Config(MethodConfig):
    """Tucker-2 (Kim et al. 2016): 1x1 -> k x k core -> 1x1, ranks (R_out, R_in)."""

    n_iter_max: int = 100
    method: ClassVar[str] = "tucker2"


@dataclass
class CPConfig(MethodConfig):
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
class TTConfig(MethodConfig):
    """Tensor-train matrix format for Linear and Embedding layers (Novikov et al. 2015).

    Attributes:
        n_cores: number of TT cores when the dimension factorisations are automatic.
        row_dims / col_dims: explicit factorisations of the output / input dimension.
    """

    n_cores: int = 3
    row_dims: tuple[int, ...] | None = None
    col_dims: tuple[int, ...] | None = None
    method: ClassVar[str] = "tt"


CONFIGS: dict[str, type[MethodConfig]] = {
    c.__name__: c for c in (SVDConfig, SpatialSVDConfig, Tucker2Config, CPConfig, TTConfig)
}
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {c.method: c for c in CONFIGS.values()}


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
    """``config_for_method("tucker2", rank=0.5)`` -> ``Tucker2Config(rank=0.5)``."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHOD_CONFIGS)}")
    return METHOD_CONFIGS[method](**kwargs)
