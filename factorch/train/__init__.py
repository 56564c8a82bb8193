"""Training and evaluation loops (no compression, no argument parsing)."""

from factorch.train.distill import DistillationLoss as DistillationLoss
from factorch.train.distill import finetune as finetune
from factorch.train.loop import TrainConfig as TrainConfig
from factorch.train.loop import TrainResult as TrainResult
from factorch.train.loop import evaluate as evaluate
from factorch.train.loop import train as train

__all__ = ["DistillationLoss", "finetune", "TrainConfig", "TrainResult", "evaluate", "train"]
