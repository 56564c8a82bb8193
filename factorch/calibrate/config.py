"""``CalibrationConfig``: data-driven reconstruction of factorized layers from calibration batches."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_VERSION = 1


@dataclass
class CalibrationConfig:
    """Refit each factorized layer to the dense network's responses on calibration data (no labels, no SGD
    over the network).

    Layers are processed in network order. For each, the inputs come from the *compressed* network (the
    layers before it already calibrated) and the targets are the dense layer's outputs in the *dense*
    network (asymmetric reconstruction, Zhang et al. 2016), so errors do not accumulate. The last stage of the
    factorized layer (1x1 / 1 x k conv or Linear, with its bias) is solved in closed form by ridge
    regression on those pairs; with ``nonlinear=True`` and an activation right after the layer (BatchNorm
    then ReLU, etc.), a few Adam steps then fit all the layer's factors through that nonlinearity.

    Args:
        n_samples: calibration inputs taken from ``calib_data``.
        nonlinear: also fit through the following activation.
        batch_size: inputs per forward pass.
        ridge: ridge strength, relative to the mean diagonal of the normal equations.
        steps: Adam steps of the nonlinear fit (full passes over the stored samples count ``steps``).
        lr: Adam learning rate of the nonlinear fit, relative to each parameter's RMS value.
        max_rows: pixels (rows of the regression) sampled per layer for the nonlinear fit.
        progress: show a progress bar.
    """

    n_samples: int = 512
    nonlinear: bool = True
    batch_size: int = 128
    ridge: float = 1e-6
    steps: int = 30
    lr: float = 1e-3
    max_rows: int = 200_000
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("n_samples", "batch_size", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"CalibrationConfig({name}=...) must be an int >= 1, got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 0:
            raise ValueError(f"CalibrationConfig(steps=...) must be an int >= 0, got {self.steps!r}")
        for name in ("ridge", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"CalibrationConfig({name}=...) must be a number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "CalibrationConfig", "version": CALIBRATION_VERSION, **asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CalibrationConfig:
        data = dict(data)
        data.pop("type", None)
        version = data.pop("version", CALIBRATION_VERSION)
        if version > CALIBRATION_VERSION:
            raise ValueError(f"CalibrationConfig version {version} is newer than this factorch understands")
        return CalibrationConfig(**data)


def as_calibration(value: Any) -> CalibrationConfig | None:
    """``None``, a :class:`CalibrationConfig`, an int (number of samples) or ``True`` (defaults)."""
    if value is None or value is False:
        return None
    if value is True:
        return CalibrationConfig()
    if isinstance(value, CalibrationConfig):
        return value
    if isinstance(value, numbers.Integral):
        return CalibrationConfig(n_samples=int(value))
    if isinstance(value, dict):
        return CalibrationConfig.from_dict(value)
    raise TypeError(f"calibrate must be None, a CalibrationConfig or a number of samples, got {type(value).__name__}")
