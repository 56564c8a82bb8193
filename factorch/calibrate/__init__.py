"""Data-driven reconstruction: refit factorized layers to the dense network's responses, no fine-tuning."""

from factorch.calibrate.config import CalibrationConfig as CalibrationConfig
from factorch.calibrate.reconstruct import CalibrationReport as CalibrationReport
from factorch.calibrate.reconstruct import calibrate_ as calibrate_

__all__ = ["CalibrationConfig", "CalibrationReport", "calibrate_"]
