"""Datasets: Fashion-MNIST from local IDX files, calibration subsets, synthetic fixtures."""

from factorch.data.fashion_mnist import CLASSES as CLASSES
from factorch.data.fashion_mnist import DatasetNotFoundError as DatasetNotFoundError
from factorch.data.fashion_mnist import FashionMNIST as FashionMNIST
from factorch.data.fashion_mnist import calibration_subset as calibration_subset
from factorch.data.fashion_mnist import fashion_mnist as fashion_mnist
from factorch.data.fashion_mnist import make_fixture as make_fixture
from factorch.data.fashion_mnist import read_idx as read_idx

__all__ = ["CLASSES", "DatasetNotFoundError", "FashionMNIST", "calibration_subset", "fashion_mnist",
           "make_fixture", "read_idx"]
