import pytest
import torch

from factorch.data import make_fixture


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory):
    """A tiny generated Fashion-MNIST look-alike in IDX .gz format."""
    return make_fixture(tmp_path_factory.mktemp("fmnist"), n_train=96, n_test=48)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tables that AutoConfig caches go to a per-test folder, never to the user's ~/.cache."""
    monkeypatch.setenv("FACTORCH_CACHE", str(tmp_path / "cache"))
