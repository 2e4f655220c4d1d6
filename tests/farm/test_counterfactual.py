"""Counterfactual memorization of token sequences through the subset-model farm, on real fortunes."""

import functools

import numpy as np
import torch
from torch.utils.data import Subset

import proxies
from proxies.predictions import predict_signals
from proxies.sequences import SEQUENCE_COLUMNS, sequence_signals
from tests.conftest import requires_fortunes
from unlearn.farm.subset_models import subset_jobs, train_subset_models
from unlearn.models import create_model

RECIPE = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "momentum": 0.0, "weight_decay": 0.0, "optimizer": "adamw"}


def _model_fn(splits):
    return functools.partial(create_model, "tiny_gpt", vocab_size=splits.vocab_size, n_positions=splits.max_tokens,
                             n_embd=32, n_layer=1, n_head=2)


@requires_fortunes
def test_predicted_signals_are_the_eval_mode_sequence_signals(fortunes):
    torch.manual_seed(0)
    model = _model_fn(fortunes)().eval()
    data = Subset(fortunes.train, range(40))
    signals, labels, index = predict_signals(model, data, batch_size=16)
    ids = torch.stack([data[i][0] for i in range(40)])
    with torch.no_grad():
        expected = sequence_signals(model(ids).logits, labels)
    torch.testing.assert_close(signals, expected, rtol=1e-5, atol=1e-6)
    assert index.tolist() == list(range(40)) and signals.shape == (40, len(SEQUENCE_COLUMNS))


@requires_fortunes
def test_counterfactual_memorization_is_the_token_accuracy_in_minus_out(fortunes, tmp_path):
    data = Subset(fortunes.train, range(48))
    models = train_subset_models(data, _model_fn(fortunes), k=4, folder=tmp_path, fraction=0.5, seed=1,
                                 progress=False, **RECIPE)
    assert models.logits is None and models.accuracy.shape == (4, 48)
    assert ((models.accuracy >= 0) & (models.accuracy <= 1)).all()
    jobs = subset_jobs(48, 4, fraction=0.5, seed=1)
    for row, job in enumerate(jobs):
        assert np.flatnonzero(models.in_mask[row]).tolist() == job.train_ids.tolist()
    # the estimator from its definition: mean token accuracy over the models that trained on it, minus the others
    expected = [models.accuracy[models.in_mask[:, n], n].mean() - models.accuracy[~models.in_mask[:, n], n].mean()
                if 0 < models.in_mask[:, n].sum() < 4 else np.nan for n in range(48)]
    got = proxies.compute("memorization", subset_models=models)
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-12)
    # a rerun reads the finished models back instead of training them
    again = train_subset_models(data, _model_fn(fortunes), k=4, folder=tmp_path, fraction=0.5, seed=1,
                                progress=False, **RECIPE)
    np.testing.assert_array_equal(again.accuracy, models.accuracy)
