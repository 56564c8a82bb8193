"""factorch: make trained PyTorch networks smaller and faster by factorizing their layers."""

from factorch import data as data
from factorch import models as models

__version__ = "0.1.0"
