"""unlearn.training.transformers.RecorderCallback: a recording made during a Hugging Face Trainer.train on real text
(Debian's fortunes) equals what the model computed in its training forwards, its input gradients equal each
sequence's own, recomputed alone, and neither depends on the batch size or gradient accumulation."""

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate>=1.1")

import proxies  # noqa: E402
from proxies import TrainingRecorder  # noqa: E402
from proxies.batching import IndexedDataset  # noqa: E402
from proxies.sequences import CAUSAL_LM, CausalLM, sequence_signals  # noqa: E402
from unlearn.training.transformers import RecorderCallback, as_hf_dataset  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
VOCAB, LENGTH, BOS, PAD = 128, 40, 2, 0

pytestmark = pytest.mark.slow  # trains through transformers' Trainer: make test-slow


def _read_fortunes(count: int) -> list[str]:
    """The first ``count`` fortunes of 10 to 400 characters, files in name order (Latin-1, ``%`` lines between)."""
    if not FORTUNES.is_dir():
        pytest.skip("Debian's fortunes not installed (apt-get install fortunes)")
    texts = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix in (".dat", ".u8") or not path.is_file():
            continue
        entries = re.split(r"^%$", path.read_text(encoding="latin-1"), flags=re.MULTILINE)
        texts += [entry.strip() for entry in entries if 10 <= len(entry.strip()) <= 400]
        if len(texts) >= count:
            return texts[:count]
    pytest.skip(f"fewer than {count} fortunes under {FORTUNES}")


@pytest.fixture(scope="module")
def fortunes():
    """200 fortunes as right-padded ``(input_ids, labels, index)`` token sequences: BOS then the bytes mod 128,
    padding unscored, and every third one with an unscored 5-token prefix (a prompt), so that sequences score
    different numbers of tokens."""
    rows, targets = [], []
    for i, text in enumerate(_read_fortunes(200)):
        tokens = [BOS] + [byte % VOCAB for byte in text.encode("latin-1")][:LENGTH - 1]
        ids = torch.full((LENGTH,), PAD)
        ids[:len(tokens)] = torch.tensor(tokens)
        labels = torch.full((LENGTH,), -100)
        labels[:len(tokens)] = ids[:len(tokens)]
        if i % 3 == 0:
            labels[:5] = -100
        rows.append(ids)
        targets.append(labels)
    return IndexedDataset(torch.stack(rows), torch.stack(targets), task=CausalLM(pad_id=PAD))


def _model(dropout: float = 0.0):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout,
                                     attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(config)


def _trainer(model, data, recorder, tmp_path, *, trainer_class=None, eval_dataset=None, **options):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1, use_cpu=True,
                    report_to=[], save_strategy="no", seed=0, remove_unused_columns=False,
                    disable_tqdm=True, logging_strategy="no")
    settings.update(options)
    return (trainer_class or transformers.Trainer)(
        model=model, args=transformers.TrainingArguments(**settings), train_dataset=as_hf_dataset(data),
        eval_dataset=eval_dataset, callbacks=[RecorderCallback(recorder)])


class _Spy:
    """What each forward of the model computed, seen from hooks registered before the callback's: the index of a
    training batch (before the callback takes it out), the labels, the logits, and whether ``index`` reached the
    model's forward."""

    def __init__(self, model):
        self.forwards = []  # (training, index, labels, logits)
        self.index_reached_forward = False
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)

    def _before(self, model, args, kwargs):
        self._index = kwargs["index"].clone() if "index" in kwargs else None

    def _after(self, model, args, kwargs, output):
        self.index_reached_forward |= "index" in kwargs
        self.forwards.append((model.training, self._index, kwargs["labels"].clone(), output.logits.detach().clone()))

    def training_forwards(self):
        return [forward[1:] for forward in self.forwards if forward[0]]


@pytest.fixture(scope="module")
def trained(fortunes, tmp_path_factory):
    """2 epochs of batches of 16 with dropout, an evaluation every 10 steps on 32 training sequences (same indices),
    so an evaluation recorded by mistake would overwrite some of an epoch's rows with its own."""
    model = _model(dropout=0.1)
    spy = _Spy(model)
    recorder = TrainingRecorder(len(fortunes))
    trainer = _trainer(model, fortunes, recorder, tmp_path_factory.mktemp("trained"), num_train_epochs=2,
                       eval_strategy="steps", eval_steps=10, per_device_eval_batch_size=16,
                       eval_dataset=as_hf_dataset(Subset(fortunes, range(32))))
    trainer.train()
    return model, spy, recorder


def test_every_sequence_is_recorded_once_per_epoch_from_its_training_forward(fortunes, trained):
    model, spy, rec = trained
    n, steps = len(fortunes), -(-len(fortunes) // 16)
    forwards = spy.training_forwards()
    assert rec.num_epochs == 2 and rec.values.shape == (2, n, 6) and rec.presented.all()
    assert len(forwards) == 2 * steps and not spy.index_reached_forward
    for epoch in range(2):
        batches = forwards[epoch * steps:(epoch + 1) * steps]
        indices = torch.cat([index for index, _, _ in batches])
        assert sorted(indices.tolist()) == list(range(n))  # each sequence once, with its own index
        expected = torch.full((n, 6), float("nan"))
        losses = torch.full((n,), float("nan"))
        for index, labels, logits in batches:
            expected[index] = sequence_signals(logits, labels)
            losses[index] = CAUSAL_LM.loss(logits, labels, reduction="none")  # not through the recorder's kernels
        np.testing.assert_allclose(rec.values[epoch], expected.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec["loss"][epoch], losses.numpy(), rtol=1e-4)
    assert rec.labels is not None and rec.num_classes == VOCAB


def test_evaluation_is_not_recorded(trained):
    model, spy, rec = trained
    evaluations = [forward[1:] for forward in spy.forwards if not forward[0]]
    assert len(evaluations) == 3 * 2  # after steps 10, 20 (mid-epoch) and the last (26), 2 batches each
    for index, labels, logits in evaluations:  # eval mode: no dropout, and other weights than the training forwards
        assert index is not None and not spy.index_reached_forward
        evaluated = sequence_signals(logits, labels).numpy()
        for epoch in range(2):
            assert not np.isclose(rec.values[epoch, index.numpy()], evaluated, rtol=1e-4).all(axis=1).any()
    assert rec.num_epochs == 2


def test_weight_norm_is_the_models_at_the_last_epochs_end(trained):
    model, spy, rec = trained
    norm = torch.cat([p.detach().double().flatten() for p in model.parameters()]).norm()
    np.testing.assert_allclose(rec.weight_norms[-1], float(norm), rtol=1e-6)
    assert np.isfinite(rec.weight_norms).all() and rec.weight_norms[0] != rec.weight_norms[1]


def test_recording_feeds_the_recording_proxies(trained):
    model, spy, rec = trained
    names = [name for name in proxies.RECORDING_PROXIES if proxies.get_proxy(name).scores("causal_lm")]
    assert "memorization_estimate" not in names  # fitted on images' recordings: it refuses sequences
    scores = proxies.compute(names, recording=rec)
    assert len(scores) == rec.num_examples and np.isfinite(scores.to_numpy(dtype=float)).all()


def _own_input_gradient_norm(model, input_ids, labels) -> float:
    """``||d(mean token NLL of this sequence alone) / d(its token embeddings)||^2``, recomputed on its own."""
    kept = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: kept.append(out) or out.retain_grad())
    model.train()
    model.zero_grad()
    CAUSAL_LM.loss(model(input_ids=input_ids[None]).logits, labels[None]).backward()
    handle.remove()
    return float(kept[0].grad.double().pow(2).sum())


def _first_step(fortunes, tmp_path, *, batch_size, accumulation, loss_kwargs):
    """One optimizer step (``max_steps=1``): every sequence presented in it saw the initial weights."""
    model = _model()
    if not loss_kwargs:  # Trainer then passes no num_items_in_batch: a per-micro-batch mean, divided by accumulation
        model.accepts_loss_kwargs = False
    initial = copy.deepcopy(model)
    recorder = TrainingRecorder(len(fortunes))
    _trainer(model, fortunes, recorder, tmp_path, per_device_train_batch_size=batch_size,
             gradient_accumulation_steps=accumulation, max_steps=1).train()
    return initial, recorder


@pytest.fixture(scope="module")
def first_step(fortunes, tmp_path_factory):
    """``first_step(batch_size, accumulation, loss_kwargs=True)``: the initial model and the recording of
    :func:`_first_step`, each run once for the module."""
    runs = {}

    def run(batch_size, accumulation, loss_kwargs=True):
        key = batch_size, accumulation, loss_kwargs
        if key not in runs:
            runs[key] = _first_step(fortunes, tmp_path_factory.mktemp("first_step"), batch_size=batch_size,
                                    accumulation=accumulation, loss_kwargs=loss_kwargs)
        return runs[key]

    return run


@pytest.mark.parametrize("batch_size, accumulation, loss_kwargs",
                         [(16, 1, True), pytest.param(8, 2, True, marks=pytest.mark.slow),
                          pytest.param(8, 2, False, marks=pytest.mark.slow)])
def test_input_gradients_are_each_sequences_own(fortunes, first_step, batch_size, accumulation, loss_kwargs):
    initial, rec = first_step(batch_size, accumulation, loss_kwargs)
    presented = np.flatnonzero(rec.presented[0])
    assert len(presented) == 16
    norms = rec.input_gradient_norms[0]
    assert np.isnan(np.delete(norms, presented)).all()
    expected = [_own_input_gradient_norm(initial, *fortunes[int(i)][:2]) for i in presented]
    np.testing.assert_allclose(norms[presented], expected, rtol=1e-4)


def test_gradient_accumulation_records_what_one_larger_batch_does(first_step):
    """The first optimizer step with 16 = 8 x 2 accumulated sequences sees the same weights and the same sequences
    (the sampler's order does not depend on the batch size) as one batch of 16: the same rows."""
    (_, whole), (_, accumulated) = first_step(16, 1), first_step(8, 2)
    np.testing.assert_array_equal(whole.presented, accumulated.presented)
    np.testing.assert_allclose(accumulated.values, whole.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(accumulated.input_gradient_norms, whole.input_gradient_norms, rtol=1e-4)


class _DoubledLoss(torch.nn.Module):
    """A causal LM whose loss is twice Hugging Face's token mean."""

    def __init__(self):
        super().__init__()
        self.lm = _model()

    def forward(self, input_ids, labels, **kwargs):
        output = self.lm(input_ids=input_ids, labels=labels)
        output.loss = 2 * output.loss
        return output


class _OwnLossTrainer(transformers.Trainer):
    """Backpropagates a loss of its own, computed from the logits, not the model's output.loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = model(**inputs)
        return CAUSAL_LM.loss(output.logits, inputs["labels"])


class _Unindexed(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = as_hf_dataset(data)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {key: value for key, value in self.data[i].items() if key != "index"}


@pytest.mark.slow
def test_errors(fortunes, tmp_path):
    data = Subset(fortunes, range(32))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        _trainer(_model(), data, TrainingRecorder(len(fortunes)), tmp_path, remove_unused_columns=True).train()
    model = _model()
    trainer = _trainer(model, data, TrainingRecorder(len(fortunes)), tmp_path, max_steps=1)
    trainer.train_dataset = _Unindexed(data)
    with pytest.raises(ValueError, match="without 'index'"):
        trainer.train()
    assert not model._forward_pre_hooks and not model._forward_hooks  # the failed training unhooked the model
    assert not model.get_input_embeddings()._forward_hooks
    with pytest.raises(ValueError, match="causal-LM loss"):
        _trainer(_DoubledLoss(), data, TrainingRecorder(len(fortunes)), tmp_path, max_steps=1).train()
    with pytest.raises(RuntimeError, match="did not go through output.loss"):
        _trainer(_model(), data, TrainingRecorder(len(fortunes)), tmp_path, max_steps=1,
                 trainer_class=_OwnLossTrainer).train()
    # without input gradients, a loss of one's own is fine: the logits are what is recorded
    rec = TrainingRecorder(len(fortunes), input_gradients=False)
    _trainer(_model(), data, rec, tmp_path, max_steps=1, trainer_class=_OwnLossTrainer).train()
    assert rec.presented[0].sum() == 16 and rec.input_gradient_norms is None

    with pytest.raises(TypeError, match="TrainingRecorder"):
        RecorderCallback(object())
    with pytest.raises(ValueError, match=r"items \(input_ids, labels, index\)"):
        as_hf_dataset([(torch.zeros(3), torch.zeros(3))])[0]
    callback = RecorderCallback(TrainingRecorder(4))
    args = dict(world_size=1, n_gpu=1, remove_unused_columns=False, label_smoothing_factor=0.0, fp16=False)
    for change, error, match in [({"world_size": 2}, RuntimeError, "distributed"), ({"n_gpu": 2}, RuntimeError,
                                 "DataParallel"), ({"label_smoothing_factor": 0.1}, ValueError, "label_smoothing"),
                                 ({"fp16": True}, ValueError, "fp16")]:
        with pytest.raises(error, match=match):
            callback.on_train_begin(SimpleNamespace(**{**args, **change}), None, None, model=_model())
