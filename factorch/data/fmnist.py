"""Fashion-MNIST (Xiao et al. 2017) read from its IDX ``.gz`` files, never downloaded.

Root lookup order: the ``root`` argument, then ``$FACTORCH_DATA``, then Debian's
``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FACTORCH_DATA"
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = (
    "Install the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX .gz "
    f"files in a folder and pass root=... or set ${ENV_VAR}."
)
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """The data files were not found in any of the places looked at."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 0
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header promises shape {shape} but the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def candidate_roots(root: str | Path | None = None) -> list[Path]:
    """The folders searched for the data, in order."""
    roots = []
    if root is not None:
        roots.append(Path(root))
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(DEBIAN_ROOT)
    return roots


def find_files(split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """Locate the image and label files of ``split``, or raise naming every path tried."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    tried = []
    for r in candidate_roots(root):
        paths = tuple(r / name for name in FILES[split])
        if all(p.is_file() for p in paths):
            return paths  # type: ignore[return-value]
        tried += [str(p) for p in paths if not p.is_file()]
    raise DatasetNotFoundError(f"Fashion-MNIST {split!r} files not found. Tried: {', '.join(tried)}. {INSTALL_HINT}")


class FashionMNIST(Dataset):
    """Fashion-MNIST as normalised ``1x28x28`` float tensors and int labels.

    With ``augment=True`` each image is randomly shifted by up to ``pad`` pixels (zero-padded crop) and
    flipped left-right with probability 1/2. The augmentation draws from the dataset's own generator,
    re-seeded by :meth:`set_epoch`, so a training run is reproducible and resumable.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, *, augment: bool = False, pad: int = 2, seed: int = 0
    ) -> None:
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"expected images N x H x W and N labels, got {images.shape} and {labels.shape}")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        self.images = (x - MEAN) / STD
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.augment, self.pad, self.seed = augment, pad, seed
        self._gen = torch.Generator().manual_seed(seed)
        self._background = (0.0 - MEAN) / STD

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the augmentation for ``epoch`` (deterministic given the dataset seed)."""
        self._gen.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index]
        if self.augment:
            dx, dy, flip = torch.randint(0, 2 * self.pad + 1, (3,), generator=self._gen).tolist()
            if self.pad:
                h, w = img.shape[-2:]
                padded = torch.nn.functional.pad(img, (self.pad,) * 4, value=self._background)
                img = padded[:, dy : dy + h, dx : dx + w]
            if flip % 2:
                img = img.flip(-1)
        return img, int(self.labels[index])


def fashion_mnist(
    split: str, root: str | Path | None = None, *, augment: bool | None = None, seed: int = 0
) -> FashionMNIST:
    """Load a Fashion-MNIST split.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding the IDX ``.gz`` files (default: ``$FACTORCH_DATA``, then Debian's path).
        augment: random shifts and flips; default ``True`` for ``"train"``, ``False`` for ``"test"``.
        seed: seed of the augmentation.
    """
    images_path, labels_path = find_files(split, root)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if augment is None:
        augment = split == "train"
    return FashionMNIST(images, labels, augment=augment, seed=seed)


def calibration_subset(dataset: Dataset, n: int, *, seed: int = 0) -> Subset:
    """A seeded random subset of ``n`` samples (e.g. for calibration); ``n`` must not exceed the dataset."""
    size = len(dataset)  # type: ignore[arg-type]
    if not 0 < n <= size:
        raise ValueError(f"n must be in [1, {size}] for a dataset of {size} samples, got {n}")
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, idx.tolist())


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fixture(
    root: str | Path, n_train: int = 64, n_test: int = 32, seed: int = 0, size: Sequence[int] = (28, 28)
) -> Path:
    """Write a small synthetic Fashion-MNIST look-alike (for tests and demos) to ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, *size)).astype(np.uint8)
        for i, c in enumerate(labels):  # a class-dependent bright band so that the task is learnable
            images[i, 2 * c : 2 * c + 4, :] = 230
        write_idx(root / FILES[split][0], images)
        write_idx(root / FILES[split][1], labels)
    return root
