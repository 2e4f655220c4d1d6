"""unlearn.training.lightning.RecorderCallback: a recording made during Trainer.fit equals a slow recomputation of
what the module saw, and feeds the proxies and rum."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

if os.environ.get("CI") == "true":
    import lightning  # noqa: F401  CI installs the extra: a missing one must fail, not skip
pl = pytest.importorskip("lightning.pytorch")

import proxies  # noqa: E402
from proxies import TrainingRecorder  # noqa: E402
from tests.proxies.test_recording import _expected  # noqa: E402
from unlearn import create_model, unlearn  # noqa: E402
from unlearn.training.lightning import RecorderCallback  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec"),
              pytest.mark.filterwarnings("ignore:.*GPU available but not used")]


class Classifier(pl.LightningModule):
    """digits_cnn under the digits recipe's SGD, keeping what the recorder should have seen (the spy)."""

    def __init__(self, *, detach_inputs=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = create_model("digits_cnn", num_classes=10, in_channels=1)
        self.detach_inputs = detach_inputs
        self.batches = []  # per epoch: (logits, labels, index) of each batch
        self.gradients = []  # per epoch: (index, squared input-gradient norms of the summed loss) of its first batch
        self.weight_norms = []

    def on_train_epoch_start(self):
        self.batches.append([])

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        logits = self.net(x.detach() if self.detach_inputs else x)
        loss = F.cross_entropy(logits, y)
        if batch_idx == 0 and x.requires_grad and not self.detach_inputs:  # the reference: through the same graph
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, retain_graph=True)
            self.gradients.append((index.clone(), grad.double().pow(2).flatten(1).sum(1)))
        self.batches[-1].append((logits.detach().clone(), y.clone(), index.clone()))
        return {"loss": loss, "logits": logits.detach()}

    def on_train_epoch_end(self):
        self.weight_norms.append(float(torch.cat([p.detach().double().flatten() for p in self.parameters()]).norm()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def _fit(module, data, recorder, *, epochs=3, batch_size=64, **trainer_options):
    """Fit under Lightning's ``deterministic=True``, which switches torch's deterministic algorithms on for the whole
    process and leaves them on: put them back as they were, for the tests that run after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, \
        torch.backends.cudnn.benchmark
    try:
        return _fit_deterministic(module, data, recorder, epochs=epochs, batch_size=batch_size, **trainer_options)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def _fit_deterministic(module, data, recorder, *, epochs, batch_size, **trainer_options):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         callbacks=[RecorderCallback(recorder)], **trainer_options)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(module, loader)
    return module


@pytest.fixture(scope="module")
def fitted(digits):
    recorder = TrainingRecorder(len(digits.train))
    return _fit(Classifier(), digits.train, recorder), recorder


def test_recording_matches_what_the_module_saw(digits, fitted):
    module, rec = fitted
    n = len(digits.train)
    assert rec.num_epochs == 3 and rec.values.shape == (3, n, 5)
    for epoch in range(3):
        assert np.isfinite(rec.values[epoch]).all()  # every example presented each epoch
        np.testing.assert_allclose(rec.values[epoch], _expected(module.batches[epoch], n), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(rec.labels, [int(digits.train[i][1]) for i in range(n)])
    assert rec.num_classes == 10


def test_input_gradient_norms_match_autograd(fitted):
    module, rec = fitted
    norms = rec.input_gradient_norms
    assert norms.shape == rec.values.shape[:2] and np.isfinite(norms).all() and (norms > 0).all()
    assert len(module.gradients) == 3
    for epoch, (index, expected) in enumerate(module.gradients):
        np.testing.assert_allclose(norms[epoch, index.numpy()], expected.numpy(), rtol=1e-4)


def test_weight_norms_are_the_modules_at_each_epoch_end(fitted):
    module, rec = fitted
    np.testing.assert_allclose(rec.weight_norms, module.weight_norms, rtol=1e-6)


def test_recording_feeds_the_proxies_and_rum(digits, fitted):
    module, rec = fitted
    scores = proxies.compute(proxies.RECORDING_PROXIES, recording=rec)
    assert np.isfinite(scores.to_numpy(dtype=float)).all()
    forget, retain = Subset(digits.train, range(30)), Subset(digits.train, range(30, 300))
    result = unlearn(module.net, forget=forget, retain=retain, method="rum", proxy="confidence", recording=rec,
                     policy="random_label_fast", seed=0)
    assert isinstance(result.model, torch.nn.Module)


def test_gradient_accumulation_scales_the_input_gradients_back(digits):
    data = Subset(digits.train, range(256))
    rec = TrainingRecorder(len(digits.train))
    module = _fit(Classifier(), data, rec, epochs=1, accumulate_grad_batches=2)
    index, expected = module.gradients[0]
    np.testing.assert_allclose(rec.input_gradient_norms[0, index.numpy()], expected.numpy(), rtol=1e-4)
    assert np.isfinite(rec.values[0, :256]).all() and np.isnan(rec.values[0, 256:]).all()


def test_bf16_mixed_logits_are_recorded_in_float32(digits):
    rec = TrainingRecorder(len(digits.train), input_gradients=False)
    _fit(Classifier(), Subset(digits.train, range(128)), rec, epochs=1, precision="bf16-mixed")
    assert rec.values.dtype == np.float32 and np.isfinite(rec.values[0, :128]).all()
    assert rec.input_gradient_norms is None


class _NoLogits(Classifier):
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])


def test_errors(digits):
    data = Subset(digits.train, range(64))
    with pytest.raises(ValueError, match="'logits'"):
        _fit(_NoLogits(), data, TrainingRecorder(len(digits.train)), epochs=1)
    with pytest.raises(RuntimeError, match="x.grad is None"):
        _fit(Classifier(detach_inputs=True), data, TrainingRecorder(len(digits.train)), epochs=1)
    pairs = [(x, y) for x, y, _ in data]
    with pytest.raises(ValueError, match=r"\(x, y, index\)"):
        _fit(Classifier(), pairs, TrainingRecorder(len(digits.train)), epochs=1)
    with pytest.raises(TypeError, match="TrainingRecorder"):
        RecorderCallback(object())
    with pytest.raises(ValueError, match="loss_reduction"):
        RecorderCallback(TrainingRecorder(4), loss_reduction="none")

    callback = RecorderCallback(TrainingRecorder(4))
    with pytest.raises(RuntimeError, match="distributed"):
        callback.setup(SimpleNamespace(world_size=2, precision_plugin=None), None, "fit")
    with pytest.raises(ValueError, match="loss scaler"):
        callback.setup(SimpleNamespace(world_size=1, precision_plugin=SimpleNamespace(scaler=object()),
                                       precision="16-mixed"), None, "fit")
    callback.setup(SimpleNamespace(world_size=2), None, "validate")  # only fit is recorded
    with pytest.raises(TypeError, match="floating-point"):
        callback.on_train_batch_start(None, None, (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2),
                                                   torch.arange(2)), 0)
