import gzip

import numpy as np
import pytest
import torch

from factorch.data import calibration_subset, fashion_mnist, read_idx
from factorch.data.fmnist import DatasetNotFoundError, write_idx


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, arr)
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


def test_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_loads_fixture_normalised(fmnist_root):
    train = fashion_mnist("train", fmnist_root)
    test = fashion_mnist("test", fmnist_root)
    assert len(train) == 96 and len(test) == 48
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert train.augment and not test.augment


def test_env_var_root(fmnist_root, monkeypatch):
    monkeypatch.setenv("FACTORCH_DATA", str(fmnist_root))
    assert len(fashion_mnist("test")) == 48


def test_missing_data_names_every_path_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORCH_DATA", str(tmp_path / "env"))
    monkeypatch.setattr("factorch.data.fmnist.DEBIAN_ROOT", tmp_path / "debian")
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist("test", tmp_path / "arg")
    msg = str(info.value)
    for folder in ("arg", "env", "debian"):
        assert str(tmp_path / folder / "t10k-images-idx3-ubyte.gz") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_unknown_split(fmnist_root):
    with pytest.raises(ValueError, match="split must be one of"):
        fashion_mnist("valid", fmnist_root)


def test_augmentation_is_seeded_per_epoch(fmnist_root):
    a, b = fashion_mnist("train", fmnist_root), fashion_mnist("train", fmnist_root)
    a.set_epoch(3)
    b.set_epoch(3)
    xa = torch.stack([a[i][0] for i in range(20)])
    xb = torch.stack([b[i][0] for i in range(20)])
    assert torch.equal(xa, xb)
    a.set_epoch(4)
    assert not torch.equal(torch.stack([a[i][0] for i in range(20)]), xa)
    plain = fashion_mnist("train", fmnist_root, augment=False)
    assert not torch.equal(xa, torch.stack([plain[i][0] for i in range(20)]))


def test_calibration_subset(fmnist_root):
    data = fashion_mnist("train", fmnist_root)
    s1, s2 = calibration_subset(data, 10, seed=1), calibration_subset(data, 10, seed=1)
    assert list(s1.indices) == list(s2.indices) and len(set(s1.indices)) == 10
    assert list(calibration_subset(data, 10, seed=2).indices) != list(s1.indices)
    with pytest.raises(ValueError, match=r"n must be in \[1, 96\]"):
        calibration_subset(data, 97)
