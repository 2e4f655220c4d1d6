import pytest
import torch

from unlearn.data import load_dataset
from unlearn.data.sources import DEBIAN_FASHION_MNIST


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each device a test should pass on: the CPU, and CUDA where there is one (skipped elsewhere)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


requires_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (make fashion-mnist)")
