"""Streamed datasets: every path reads a dataset it cannot slice a batch at a time, and gets what it gets in memory.

The dataset under test, :class:`OnDemand`, holds real digits as a numpy array (out of the library's reach: it is no
``IndexedDataset``), makes each item when asked, counts the reads of each item, and refuses to have more than a
batch's worth of its items alive at once (a list of all of them, the way to hold a dataset, raises). The read counts
show each pass streamed the data (an item read once per epoch, not once and then sliced from a copy); the results
equal those of the in-memory path bit for bit, since both draw one ``randperm`` of positions per pass.
"""

import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

import proxies
import unlearn
from proxies import TrainingRecorder
from proxies.batching import as_tensors
from unlearn.data import IndexedDataset, Streamed, batches, examples, join, labels_of, take
from unlearn.evaluation.attacks import extract_signals
from unlearn.models import create_model
from unlearn.training import train

LIVE_LIMIT = 1100  # above the largest batch any path reads (predictions: 1024), below the digits' 1,293


class OnDemand(torch.utils.data.Dataset):
    """Items ``(x, y)`` made from a numpy array when asked for; reads are counted, and a caller that keeps more than
    ``LIVE_LIMIT`` of the images it was given alive at once is refused."""

    def __init__(self, data: IndexedDataset) -> None:
        inputs, targets, _ = as_tensors(data)
        self.images, self.labels = inputs.numpy().copy(), targets.numpy().copy()
        self.reads = np.zeros(len(self.labels), dtype=np.int64)
        self.live = 0

    def __len__(self) -> int:
        return len(self.labels)

    def _released(self) -> None:
        self.live -= 1

    def __getitem__(self, i: int):
        if self.live >= LIVE_LIMIT:
            raise RuntimeError(f"{self.live} items alive at once: this dataset refuses to be held in memory")
        self.reads[i] += 1
        x = torch.from_numpy(self.images[i].copy())
        self.live += 1
        weakref.finalize(x, self._released)
        return x, int(self.labels[i])


@pytest.fixture()
def streamed(digits):
    return OnDemand(digits.train)


def _model():
    torch.manual_seed(0)
    return create_model("digits_cnn", num_classes=10, in_channels=1)


def _same_weights(a, b) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_list_of_every_item_is_refused(streamed):
    with pytest.raises(RuntimeError, match="refuses to be held"):
        _ = [streamed[i] for i in range(len(streamed))]


def test_streamed_and_in_memory_batches_are_the_same(digits, streamed):
    def read(data, **options):
        return [(x, y, i) for x, y, i in batches(data, 100, shuffle=True, generator=torch.Generator().manual_seed(3),
                                                 **options)]

    memory, stream = read(digits.train), read(Streamed(streamed))
    assert len(memory) == len(stream) == 13
    for (x, y, i), (sx, sy, si) in zip(memory, stream, strict=True):
        assert torch.equal(x, sx) and torch.equal(y, sy) and torch.equal(i, si)
    assert (streamed.reads == 1).all()
    # a Subset of a stream reads its own items only, and drop_last drops what it says
    part = read(Subset(Streamed(streamed), range(0, 1293, 2)), drop_last=True)
    assert sum(len(y) for _, y, _ in part) == 600 and (streamed.reads[1::2] == 1).all()


def test_train_streams_every_epoch_and_trains_the_same_weights(digits, streamed):
    recorders = TrainingRecorder(len(digits.train)), TrainingRecorder(len(digits.train))
    memory, memory_history = train(_model(), digits.train, epochs=2, seed=0, recorder=recorders[0], progress=False,
                                   device="cpu")
    stream, stream_history = train(_model(), streamed, epochs=2, seed=0, recorder=recorders[1], progress=False,
                                   device="cpu")
    _same_weights(memory, stream)
    pd.testing.assert_frame_equal(memory_history.drop(columns="seconds"), stream_history.drop(columns="seconds"))
    np.testing.assert_array_equal(recorders[0].values, recorders[1].values)
    assert (streamed.reads[1:] == 2).all()  # one read per epoch (item 0 also once more: train looks at its shape)


def test_worker_processes_give_the_same_training(digits, streamed):
    memory, _ = train(_model(), digits.train, epochs=2, seed=0, progress=False, device="cpu")
    workers = Streamed(streamed, num_workers=2)  # persistent: both epochs read through the same two workers
    stream, _ = train(_model(), workers, epochs=2, seed=0, progress=False, device="cpu")
    _same_weights(memory, stream)
    assert len(workers._loaders) == 1  # one loader was kept across the epochs, not one made per epoch


def test_a_pass_inside_a_pass_gets_its_own_loader(streamed):
    data = Streamed(streamed, num_workers=1)
    outer = batches(data, 500)
    first = next(outer)[2]
    inner = [i for _, _, i in batches(Subset(data, range(10)), 4)]
    rest = [i for _, _, i in outer]
    assert first.tolist() == list(range(500)) and torch.cat(inner).tolist() == list(range(10))
    assert torch.cat(rest).tolist() == list(range(500, 1293))


def test_labels_are_read_once_and_kept(digits, streamed):
    data = Streamed(streamed)
    labels, indices = labels_of(Subset(data, [7, 3, 7]))
    assert labels.tolist() == digits.train.targets[[7, 3, 7]].tolist() and indices.tolist() == [7, 3, 7]
    assert streamed.reads.sum() == 2
    labels_of(data)
    assert (streamed.reads == 1).all()
    known = Streamed(streamed, targets=streamed.labels)  # labels given: only five items read, to check them
    assert torch.equal(labels_of(known)[0], digits.train.targets) and int((streamed.reads > 1).sum()) <= 5
    wrong = torch.as_tensor(streamed.labels).clone()
    wrong[646] = (wrong[646] + 1) % 10  # the middle item, one of the five checked
    with pytest.raises(ValueError, match=r"targets disagree with the items: item 646's label is \d but targets"):
        Streamed(streamed, targets=wrong)


def test_take_and_join_stream_by_reference(digits, streamed):
    data = examples(streamed)
    assert isinstance(data, Streamed) and examples(digits.train) is digits.train
    part = take(data, [5, 9])
    assert isinstance(part, Subset) and streamed.reads.sum() == 0
    both = join(part, digits.train, positions=True)
    labels, indices = labels_of(both)
    assert len(both) == 1295 and indices.tolist() == list(range(1295))
    assert labels[:2].tolist() == digits.train.targets[[5, 9]].tolist()
    assert [int(i) for _, _, i in (both[0], both[1294])] == [0, 1294]


def test_bad_loader_options_are_refused(streamed):
    with pytest.raises(ValueError, match="num_workers"):
        Streamed(streamed, num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor"):
        Streamed(streamed, prefetch_factor=0)
    with pytest.raises(ValueError, match="targets"):
        Streamed(streamed, targets=[0, 1])
    with pytest.raises(TypeError, match="map-style"):
        Streamed(iter(range(3)))


@pytest.fixture(scope="module")
def trained(digits):
    recorder = TrainingRecorder(len(digits.train))
    model, _ = train(_model(), digits.train, epochs=3, seed=0, recorder=recorder, progress=False, device="cpu")
    return model, recorder


FORGET = list(range(0, 60))
OPTIONS = {"rum": {"proxy": "confidence", "retain_per_forget": 5.0}, "influence": {},
           "retrain": {"epochs": 1}}


BUILT_IN = ("finetune", "influence", "l1_sparse", "neggrad", "neggrad_plus", "npo", "random_label", "retrain", "rum",
            "salun", "scrub", "sga", "sharp_minmax", "simnpo", "tau")


def test_every_built_in_method_is_checked():
    assert set(BUILT_IN) == {m for m in unlearn.methods() if unlearn.algorithms.registry.get_method(m).fn.__module__
                             .startswith("unlearn.algorithms")}


SLOW_STREAMED = ("influence", "retrain", "sharp_minmax")  # a second or more each: with the slow tests


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_STREAMED else m
                                    for m in BUILT_IN])
def test_every_method_unlearns_a_streamed_set_as_it_does_in_memory(digits, trained, method):
    model, recorder = trained
    options = OPTIONS.get(method, {"epochs": 1})
    if method == "rum":
        options = {**options, "recording": recorder}
    stream = OnDemand(digits.train)
    retain_ids = list(range(60, len(digits.train)))
    memory = unlearn.unlearn(model, forget=Subset(digits.train, FORGET), retain=Subset(digits.train, retain_ids),
                             method=method, seed=1, **options)
    streamed = unlearn.unlearn(model, forget=Subset(stream, FORGET), retain=Subset(stream, retain_ids),
                               method=method, seed=1, **options)
    _same_weights(memory.model, streamed.model)
    assert [s.method for s in memory.plan] == [s.method for s in streamed.plan]
    for a, b in zip(memory.plan, streamed.plan, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    assert stream.reads[FORGET].min() >= 1
    if method == "rum":  # each step trains on a sample of the retain set, taken by index: the rest is read once
        sampled = np.unique(np.concatenate([s.retain_indices for s in streamed.plan if s.method != "noop"]))
        assert len(sampled) < len(retain_ids) // 2
        others = np.setdiff1d(retain_ids, sampled)
        assert (stream.reads[others] == 1).all()  # the labels' pass, nothing else


def test_evaluate_scores_streamed_sets_as_in_memory_ones(digits, trained):
    model, _ = trained
    stream = OnDemand(digits.train)
    test = OnDemand(digits.test)
    forget, retain = list(range(40)), list(range(40, len(digits.train)))
    attacks = ("loss_threshold", "svc")
    memory = unlearn.evaluate(model, forget=Subset(digits.train, forget), retain=Subset(digits.train, retain),
                              test=digits.test, attacks=attacks)
    streamed = unlearn.evaluate(model, forget=Subset(stream, forget), retain=Subset(stream, retain), test=test,
                                attacks=attacks)
    pd.testing.assert_frame_equal(memory, streamed)
    assert stream.reads.max() <= 2 and test.reads.max() <= 2


@pytest.mark.slow  # every model proxy twice, in memory and streamed
def test_model_proxies_and_signals_stream(digits, trained):
    model, _ = trained
    stream = Streamed(OnDemand(digits.train))
    # two curvature probes, not ten: the probes are drawn within each batch, so the data is streamed the same way
    for name, options in (("loss_curvature", {"n_probes": 2}), ("gradient_norm", {})):
        memory = proxies.compute(name, model=model, data=digits.train, progress=False, **options)
        streamed = proxies.compute(name, model=model, data=stream, progress=False, **options)
        pd.testing.assert_series_equal(memory, streamed)
    a, b = extract_signals(model, digits.train), extract_signals(model, stream)
    np.testing.assert_array_equal(a.phi, b.phi)
    np.testing.assert_array_equal(a.index, b.index)


def test_the_farm_trains_subset_and_shadow_models_on_a_stream(digits, tmp_path):
    from unlearn.evaluation.shadows import train_shadow_models
    from unlearn.farm.subset_models import train_subset_models

    small = Subset(digits.train, range(300))
    stream = Subset(Streamed(OnDemand(digits.train)), range(300))
    kwargs = {"k": 2, "epochs": 1, "progress": False}
    memory = train_subset_models(small, _model, folder=tmp_path / "m", **kwargs)
    streamed = train_subset_models(stream, _model, folder=tmp_path / "s", **kwargs)
    np.testing.assert_array_equal(memory.logits, streamed.logits)
    np.testing.assert_array_equal(memory.labels, streamed.labels)
    test = Subset(digits.test, range(100))
    memory = train_shadow_models(small, test, _model, folder=tmp_path / "sm", **kwargs)
    streamed = train_shadow_models(stream, Subset(Streamed(OnDemand(digits.test)), range(100)), _model,
                                   folder=tmp_path / "ss", **kwargs)
    np.testing.assert_array_equal(memory.logits, streamed.logits)
    np.testing.assert_array_equal(memory.in_mask, streamed.in_mask)


def test_the_heap_bound_is_set_once_and_respects_the_user(monkeypatch):
    import ctypes.util
    import platform

    from proxies import batching

    monkeypatch.setattr(batching, "_heap_bounded", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own choice: left alone
    assert batching.bound_heap_growth() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c")
    assert batching.bound_heap_growth() is bool(glibc)
    assert batching.bound_heap_growth() is bool(glibc)  # once set, it stays


def test_signals_of_many_examples_are_computed_in_chunks_with_the_same_values(digits, trained, monkeypatch):
    import dataclasses

    from unlearn.evaluation.attacks import signals
    from unlearn.evaluation.attacks.signals import AttackSignals, predict_queries

    logits, labels, index = (t.numpy() for t in predict_queries(trained[0], digits.train, ("identity", "hflip")))
    whole = AttackSignals.from_logits(logits, labels, index)
    monkeypatch.setattr(signals, "SIGNAL_ROWS", 100)  # 13 chunks, the last one short
    chunked = AttackSignals.from_logits(logits, labels, index)
    for field in dataclasses.fields(AttackSignals):
        np.testing.assert_array_equal(getattr(whole, field.name), getattr(chunked, field.name))
