import os

import pytest
import torch
from hypothesis import settings

from unlearn.data import load_dataset
from unlearn.data.sources import DEBIAN_FASHION_MNIST

# Property tests draw the same examples on every run (and remember none between runs): the suite is deterministic.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


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


FORTUNES = "/usr/share/games/fortunes"
requires_fortunes = pytest.mark.skipif(
    not os.path.isdir(FORTUNES), reason="Debian's fortunes not installed (make fortunes)")


@pytest.fixture(scope="session")
def fortunes():
    """300 real fortunes for training, a byte-level BPE of 512 tokens trained on them, sequences of <= 48 tokens."""
    if not os.path.isdir(FORTUNES):
        pytest.skip("Debian's fortunes not installed (make fortunes)")
    return load_dataset("fortunes", train_size=300, vocab_size=512, max_tokens=48)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: their tensors are so small that two threads spend more time
    handing work over than computing (several times slower on 2 busy cores). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def memorized_lm(fortunes):
    """A tiny GPT-2 that has nearly memorized the 8 shortest fortunes (the forget set, seen 20 times as often as the
    retain set: mean token NLL about 0.3, token accuracies 0.86 to 1) and seen 40 others (the retain set): ``(model,
    forget, retain)``. Shared by the modules that unlearn it (each method works on a copy; no test changes it)."""
    from torch.utils.data import Subset

    from unlearn.models import create_model
    from unlearn.training import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bits whichever module asks first, under whatever thread setting
    try:
        torch.manual_seed(0)
        model = create_model("tiny_gpt", vocab_size=fortunes.vocab_size, n_positions=fortunes.max_tokens, n_embd=32,
                             n_layer=1, n_head=2)
        shortest = torch.argsort((fortunes.train.targets[:, 1:] != -100).sum(1), stable=True).tolist()
        forget, retain = shortest[:8], shortest[8:48]
        model, _ = train(model, Subset(fortunes.train, forget * 20 + retain), epochs=12, lr=1e-2, batch_size=32,
                         momentum=0.0, weight_decay=0.0, optimizer="adamw", progress=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return model, Subset(fortunes.train, forget), Subset(fortunes.train, retain)
