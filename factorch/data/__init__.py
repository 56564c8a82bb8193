"""Datasets: Fashion-MNIST from local IDX files, calibration subsets, synthetic fixtures."""

from factorch.data.fmnist import CLASSES as CLASSES
from factorch.data.fmnist import DatasetNotFoundError as DatasetNotFoundError
from factorch.data.fmnist import FashionMNIST as FashionMNIST
from factorch.data.fmnist import calibration_subset as calibration_subset
from factorch.data.fmnist import fashion_mnist as fashion_mnist
from factorch.data.fmnist import make_fixture as make_fixture
from factorch.data.fmnist import read_idx as read_idx

__all__ = [
    "CLASSES",
    "DatasetNotFoundError",
    "FashionMNIST",
    "calibration_subset",
    "fashion_mnist",
    "make_fixture",
    "read_idx",
]
