"""train() on token sequences: a causal LM on real fortunes, AdamW with a warmup, the recorder, resuming."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from proxies import TrainingRecorder, compute
from proxies.batching import IndexedDataset
from proxies.sequences import SEQUENCE_COLUMNS, CausalLM
from tests.conftest import requires_fortunes
from unlearn.models import create_model
from unlearn.training import get_recipe, train
from unlearn.training.loop import lr_factor

RECIPE = {"epochs": 3, "lr": 3e-3, "batch_size": 32, "momentum": 0.0, "weight_decay": 0.1, "optimizer": "adamw",
          "schedule": "warmup_cosine", "seed": 1, "progress": False, "device": "cpu"}


def _model(splits):
    torch.manual_seed(0)
    return create_model("tiny_gpt", vocab_size=splits.vocab_size, n_positions=splits.max_tokens, n_embd=32,
                        n_layer=1, n_head=2)


class Killed(Exception):
    pass


@requires_fortunes
def test_a_causal_lm_trains_records_and_resumes_to_the_same_bits(fortunes, tmp_path):
    n, data = len(fortunes.train), Subset(fortunes.train, range(128))
    whole_recording = TrainingRecorder(n)
    whole, whole_history = train(_model(fortunes), data, recorder=whole_recording, **RECIPE)
    assert whole_history["loss"].is_monotonic_decreasing
    assert whole_recording.columns == SEQUENCE_COLUMNS
    assert whole_recording.values.shape == (3, n, len(SEQUENCE_COLUMNS))
    presented = whole_recording.values[:, :128]
    assert not np.isnan(presented).any() and np.isnan(whole_recording.values[:, 128:]).all()
    gradients = whole_recording.input_gradient_norms[:, :128]
    assert np.isfinite(gradients).all() and (gradients > 0).all()
    # the recorded loss column is each sequence's mean token NLL: CSL sums it over the epochs
    np.testing.assert_allclose(compute("csl", recording=whole_recording).to_numpy(),
                               whole_recording["loss"].sum(0), rtol=1e-6)

    def kill_after_second(epoch, _):
        if epoch == 2:
            raise Killed

    state = tmp_path / "state.pt"
    with pytest.raises(Killed):
        train(_model(fortunes), data, recorder=TrainingRecorder(n), resume=state, on_epoch_end=kill_after_second,
              **RECIPE)
    recording = TrainingRecorder(n)
    resumed, history = train(_model(fortunes), data, recorder=recording, resume=state, **RECIPE)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))
    np.testing.assert_array_equal(recording.values, whole_recording.values)
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), whole_history.drop(columns="seconds"))
    with pytest.raises(ValueError, match="optimizer"):  # a state of AdamW training is not one of SGD's
        train(_model(fortunes), data, resume=state, **{**RECIPE, "optimizer": "sgd"})


@requires_fortunes
def test_a_classifier_on_token_sequences_is_refused_before_any_work(fortunes):
    from unlearn import unlearn

    class Classifier(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(len(ids), 10)

    with pytest.raises(ValueError, match=r"logits \[batch, tokens, vocab\]"):
        unlearn(Classifier(), forget=Subset(fortunes.train, [0, 1]), retain=Subset(fortunes.train, [2, 3]),
                method="finetune")


def test_the_warmup_rises_then_the_cosine_falls():
    factors = [lr_factor("warmup_cosine", e, 20) for e in range(20)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0]
    assert all(a > b for a, b in zip(factors[2:], factors[3:], strict=False))
    with pytest.raises(ValueError, match="warmup_cosine"):
        lr_factor("warmup", 0, 10)


def test_the_fortunes_recipe_is_adamw_and_a_bad_optimizer_is_refused():
    recipe = get_recipe("fortunes")
    assert (recipe.optimizer, recipe.schedule) == ("adamw", "warmup_cosine")
    assert recipe.as_kwargs()["optimizer"] == "adamw" and "optimizer" not in get_recipe("digits").as_kwargs()
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adamw'\]"):
        train(torch.nn.Linear(2, 2), torch.utils.data.TensorDataset(torch.zeros(2, 2), torch.zeros(2).long()),
              optimizer="adam")


@requires_fortunes
def test_what_cannot_train_on_token_sequences_is_refused_before_any_work(fortunes):
    data = Subset(fortunes.train, range(8))
    small = create_model("tiny_gpt", vocab_size=fortunes.vocab_size - 100, n_positions=fortunes.max_tokens,
                         n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="token ids reach .* but the model embeds 412 tokens: a tokenizer of another"):
        train(small, data, **RECIPE)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(fortunes.vocab_size, 4)

        def forward(self, ids):
            return self.embed(ids).mean(1)  # [B, 4]: one score per class, not per token

    with pytest.raises(ValueError, match=r"logits \[batch, tokens, vocab\] .*got \(2, 4\)"):
        train(Classifier(), data, **RECIPE)
    ids, labels = fortunes.train.inputs[:4], torch.full_like(fortunes.train.targets[:4], -100)
    unscored = IndexedDataset(ids, labels, task=CausalLM(pad_id=fortunes.tokenizer.pad_token_id))
    with pytest.raises(ValueError, match="labels are all -100"):
        train(_model(fortunes), unscored, **RECIPE)


@requires_fortunes
def test_streamed_token_sequences_train_the_same_model_as_in_memory(fortunes):
    from unlearn.data import Streamed

    data = Subset(fortunes.train, range(64))
    recipe = {**RECIPE, "epochs": 1}
    in_memory, _ = train(_model(fortunes), data, **recipe)
    streamed, _ = train(_model(fortunes), Subset(Streamed(fortunes.train), range(64)), **recipe)
    assert all(torch.equal(a, b) for a, b in zip(in_memory.state_dict().values(), streamed.state_dict().values(),
                                                 strict=True))
