"""``evaluate``: accuracies, membership-inference attacks and ToW of an (unlearned) model, beside a reference; for a
causal language model also perplexity, token accuracy, the text attacks and PrivLeak (:mod:`.language`).

>>> from torch.utils.data import Subset
>>> from unlearn import create_model, load_dataset, train
>>> splits = load_dataset("digits")
>>> model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), splits.train, epochs=3,
...                  progress=False)
>>> report = evaluate(model, forget=Subset(splits.train, range(50)), retain=Subset(splits.train, range(50, 1293)),
...                   test=splits.test, attacks=("loss_threshold",))
>>> list(report.columns), "loss_threshold.auc" in report.index
(['model'], True)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from proxies.tasks import Classification, task_of

from ..data.sources import examples, labels_of
from ..training.trainer import resolve_device
from .attacks import DEFAULT_ATTACKS, AttackInputs, AttackSignals, NotApplicable, extract_signals, get_attack
from .language import (
    TextOptions,
    compare_with_reference,
    exposure_rows,
    extraction_rows,
    sequence_rows,
    text_attack_rows,
)
from .metrics import roc_summary, tow, tow_mia

__all__ = ["evaluate", "evaluate_ulira"]


SplitSignals = Mapping[str, Mapping[str, AttackSignals]]
"""Attack signals of models on whole splits, by model name and split (``"train"``, ``"test"``)."""


def _signals(model: nn.Module, data, split: str, given: Mapping[str, AttackSignals] | None, queries,
             device) -> AttackSignals:
    """``model``'s signals on ``data``: the rows of ``given[split]`` (its signals on the whole split, with the same
    queries) when there are some, else predicted."""
    source = (given or {}).get(split)
    if source is None:
        return extract_signals(model, data, queries=queries, device=device)
    if source.phi.shape[1] != len(queries):
        raise ValueError(f"the given {split} signals hold {source.phi.shape[1]} augmentation queries, expected "
                         f"{len(queries)} {tuple(queries)} (the shadow models' queries, else identity)")
    return source.take(source.locate(labels_of(data)[1].numpy()))


def _attack_rows(inputs: AttackInputs, attack_names, not_computed: dict[str, str]) -> dict[str, float]:
    """Each registered attack's figures as ``<attack>.<metric>`` rows; an attack that is not applicable to these
    inputs has none, its reason in ``not_computed``."""
    rows = {}
    for name in attack_names:
        try:
            values = get_attack(name).fn(inputs)
        except NotApplicable as err:  # e.g. cross-validation over a one-example forget set
            not_computed[name] = str(err)
            continue
        for metric, value in values.items():
            rows[f"{name}.{metric}"] = value
    return rows


def _report_column(model: nn.Module, forget, retain, test, attack_names, shadows, seed, device,
                   given: Mapping[str, AttackSignals] | None, population, not_computed: dict[str, str],
                   text: TextOptions | None = None) -> tuple[dict[str, float], dict | None]:
    """One model's column, and for a language model (``text`` given) its text scores by split."""
    queries = shadows.queries if shadows is not None else ("identity",)
    signals = {name: _signals(model, data, split, given, queries, device)
               for name, data, split in (("forget", forget, "train"), ("retain", retain, "train"),
                                         ("test", test, "test"))}
    column = {f"accuracy.{name}": float(s.correct[:, 0].mean()) for name, s in signals.items()}
    if text is not None:
        column |= sequence_rows(signals)
    positions = {}
    if shadows is not None:
        positions = {"forget_positions": shadows.locate("train", signals["forget"].index),
                     "test_positions": shadows.locate("test", signals["test"].index)}
        if population is not None:
            found = _signals(model, population, "test", given, queries, device)
            positions |= {"population": found, "population_positions": shadows.locate("test", found.index)}
    inputs = AttackInputs(signals["forget"], signals["retain"], signals["test"], shadows, seed=seed, **positions)
    column |= _attack_rows(inputs, attack_names, not_computed)
    if text is None:
        return column, None
    rows, scores = text_attack_rows(model, forget, test, tokenizer=text.tokenizer, device=device)
    column |= rows
    if text.extraction is not None:
        column |= extraction_rows(model, forget, text.extraction, device=device, not_computed=not_computed)
    if text.canaries is not None:
        column |= exposure_rows(model, text.canaries, text.canary_references, device=device)
    return column, scores


def _mia_fraction(column: dict[str, float]) -> tuple[str, float] | None:
    """The figure ToW-MIA compares: the SVC attack's confidence-feature efficacy (fraction of forget examples
    called non-members), else the loss-regression accuracy."""
    for key in ("svc.confidence", "loss_logreg.accuracy", "loss_threshold.balanced_accuracy"):
        if key in column:
            return key, column[key]
    return None


def _checked(forget, retain, test, attacks, shadows, population) -> tuple[Dataset, Dataset, Dataset, Dataset | None]:
    """The sets as the library takes them (:func:`~unlearn.data.sources.examples`), refused when an attack needs
    shadows there are not, a set is empty, or the population is not of the shadows' test split."""
    for name in attacks:
        if get_attack(name).needs_shadows and shadows is None:
            raise ValueError(f"attack {name!r} needs shadows= (unlearn.evaluation.shadows.train_shadow_models)")
    forget, retain, test = examples(forget), examples(retain), examples(test)  # streamed sets stay streamed
    if min(len(forget), len(retain), len(test)) == 0:
        raise ValueError("forget, retain and test must each hold at least one example")
    if population is not None:
        if shadows is None:
            raise ValueError("population= is RMIA's, which needs shadows=")
        population = examples(population)
        labels, indices = labels_of(population)
        positions = shadows.locate("test", indices.numpy())
        if not np.array_equal(shadows.labels[positions], labels.numpy()):
            raise ValueError("the population's labels differ from the shadows' test examples of the same index: "
                             "the population must be test-split examples (the validation split is not in their pool)")
    return forget, retain, test, population


def _text_options(forget: Dataset, tokenizer, extraction, canaries, canary_references) -> TextOptions | None:
    """The language-model settings when ``forget`` holds token sequences (a task other than classification), else
    None, refusing them for a classifier."""
    if isinstance(task_of(forget), Classification):
        given = [name for name, value in (("tokenizer", tokenizer), ("extraction", extraction),
                                          ("canaries", canaries), ("canary_references", canary_references))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for language models: the "
                             "forget set holds classification examples")
        return None
    return TextOptions(tokenizer, extraction, canaries, canary_references)


def _compare(columns: dict[str, dict[str, float]], named, scores: dict, text: TextOptions | None,
             not_computed: dict[str, str]) -> None:
    """Add ToW (and ToW-MIA) to each evaluated model's column against the ``reference`` column; for a language
    model on token accuracy, with PrivLeak and the reference-model attack."""
    accuracy = "accuracy" if text is None else "token_accuracy"
    accuracies = {name: {s: columns[name][f"{accuracy}.{s}"] for s in ("forget", "retain", "test")} for name in columns}
    for name in named:
        columns[name]["tow"] = tow(accuracies[name], accuracies["reference"])
        mia = _mia_fraction(columns[name])
        if mia is not None and mia[0] in columns["reference"]:
            key = mia[0]
            columns[name]["tow_mia"] = tow_mia(accuracies[name], accuracies["reference"],
                                               mia_unlearned=columns[name][key],
                                               mia_retrained=columns["reference"][key])
        if text is not None:
            columns[name] |= compare_with_reference(columns[name], scores[name], columns["reference"],
                                                    scores["reference"], not_computed)


def evaluate(model: nn.Module | Mapping[str, nn.Module], *, forget: Dataset, retain: Dataset, test: Dataset,
             reference: nn.Module | None = None, attacks=DEFAULT_ATTACKS, shadows=None, seed: int = 0,
             device: torch.device | str | None = None, signals: SplitSignals | None = None,
             population: Dataset | None = None, tokenizer=None, extraction: Mapping | None = None,
             canaries: Dataset | None = None, canary_references: Dataset | None = None) -> pd.DataFrame:
    """Evaluate an unlearned model, and a retrained-from-scratch ``reference`` beside it.

    A causal language model (``forget`` of token sequences, a :class:`proxies.sequences.CausalLM` task) gets the
    language-model rows instead of the classifier's alone (:mod:`unlearn.evaluation.language`: perplexity, token
    accuracy, the text attacks, PrivLeak, the reference-model attack, and optionally extraction and exposure); the
    registered attacks run on its sequences' signals (:mod:`~.attacks.signals`: LiRA on the mean token
    log-likelihood; ``svc`` is not applicable).

    Args:
        model: the model to evaluate, or several by name (``{"original": ..., "unlearned": ...}``: one column
            each, all scored against one evaluation of the reference).
        forget, retain, test: the forget set, the retain set and held-out data (items ``(x, y[, index])``), in
            memory or streamed (see :func:`unlearn.unlearn`): a streamed set is predicted a batch at a time, and
            only its per-example signals (a few numbers each) are kept.
        reference: the model retrained without the forget set; adds a ``reference`` column and ToW / ToW-MIA
            (on token accuracy for a language model), and for a language model ``privleak`` and
            ``mia_reference.*``.
        attacks: names from :func:`unlearn.evaluation.attacks.attacks`. ``lira``, ``lira_offline`` and ``rmia`` need
            ``shadows``.
        shadows: :class:`unlearn.evaluation.shadows.ShadowModels` trained on the training and test sets
            (:func:`unlearn.evaluation.shadows.train_shadow_models`; cached on disk, reusable across evaluations).
        seed: seed of the attacks' subsampling and cross-validation.
        signals: signals already extracted, to take rows from instead of predicting again: by model name
            (``"model"`` for a single one, ``"reference"``) and split, ``{"train": ..., "test": ...}`` as
            :func:`~.attacks.extract_signals` gives them on datasets holding the forget and retain examples
            (``train``) and the test examples (``test``), by index, with ``shadows.queries`` when there are shadows.
            A model or split missing here is predicted.
        population: RMIA's population ``z``: examples of the test split the ``shadows`` were trained beside
            (their pool holds the training and test splits only, so not the validation split), none of them in
            ``test``. Default: RMIA splits ``test`` in two by index (:func:`~.attacks.disjoint_halves`) and
            scores one half against the other, so no example is compared with itself; ``rmia.*`` then rests on
            half the test examples, the other attacks on all of them.
        tokenizer: language models: decodes tokens for the ``mia_zlib.*`` rows (e.g. ``splits.tokenizer``).
        extraction: language models: ``{"prefix_length": P, "suffix_length": S}`` and optionally the
            :data:`~unlearn.evaluation.language.EXTRACTION_DEFAULTS` (``n``, ``p``, the sampling scheme): adds
            ``extraction.rate``, ``extraction.mean_log_p`` and ``extraction.scored`` of the forget set.
        canaries, canary_references: language models: inserted secrets and never-inserted ones of the same format
            (e.g. ``splits.canary_secrets`` and ``splits.references``): adds ``exposure.mean``.

    Returns:
        A DataFrame indexed by metric (``accuracy.forget``, ``svc.confidence``, ``lira.auc``, ``tow``...) with a
        ``model`` column (or one per named model) and, given a reference, a ``reference`` column. An attack that
        cannot be computed on these sets (:class:`unlearn.evaluation.attacks.NotApplicable`, e.g. ``loss_logreg``'s
        cross-validation over one forget example) has no rows; ``attrs["not_computed"]`` maps it to the reason.
    """
    if isinstance(attacks, str):
        attacks = (attacks,)
    device = None if device is None else resolve_device(device)  # one line for a device this machine lacks
    forget, retain, test, population = _checked(forget, retain, test, attacks, shadows, population)
    text = _text_options(forget, tokenizer, extraction, canaries, canary_references)
    named = dict(model) if isinstance(model, Mapping) else {"model": model}
    if "reference" in named or not named:
        raise ValueError(f"models must be named, and not 'reference'; got {list(named)}")
    signals = signals or {}
    not_computed: dict[str, str] = {}
    models = named | ({"reference": reference} if reference is not None else {})
    columns, scores = {}, {}
    for name, m in models.items():
        columns[name], scores[name] = _report_column(m, forget, retain, test, attacks, shadows, seed, device,
                                                     signals.get(name), population, not_computed, text)
    if reference is not None:
        _compare(columns, named, scores, text, not_computed)
    report = pd.DataFrame(columns, dtype=float)
    report.index.name = "metric"
    report.attrs["not_computed"] = not_computed
    return report


def evaluate_ulira(model: nn.Module, reference: nn.Module, *, forget: Dataset, shadows,
                   device: torch.device | str | None = None,
                   signals: SplitSignals | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """U-LiRA (Hayes et al. 2024): can an attacker tell the unlearned ``model`` from the retrained ``reference`` on
    the forget examples? Shadows that trained on and then unlearned an example with the same method give its
    "unlearned" distribution, shadows that never saw it the "retrained" one.

    Both models' and the shadows' signal is ``phi``: a classifier's logit-scaled confidence, a language model's mean
    token log-likelihood of each sequence (:mod:`~.attacks.signals`).

    Args:
        model, reference: the unlearned and the retrained model.
        forget: the forget set (training examples in the shadows' pool).
        shadows: :class:`unlearn.evaluation.shadows.UnlearnedShadowModels` of the method that made ``model``.
        signals: signals already extracted (any queries, identity first), ``{"unlearned": {"train": ...},
            "retrained": {"train": ...}}`` on a dataset holding the forget examples; the rest is predicted.

    Returns:
        ``roc_summary`` of telling the two models apart over the forget examples both kinds of shadow cover (AUC
        0.5: indistinguishable, the goal) plus ``scored`` (how many), ``scored_per_example_variance`` (of them,
        those with at least 2 unlearned and 2 unseen shadows: both Gaussians have their own variance) and
        ``scored_global_variance`` (the others: a side with a single shadow takes that side's global variance,
        see :func:`unlearn.evaluation.attacks.ulira`), and the per-example scores of both models.
    """
    from .attacks import ulira
    from .attacks.lira import MIN_SHADOWS_FOR_VARIANCE

    device = None if device is None else resolve_device(device)
    forget = examples(forget)
    forget_indices = labels_of(forget)[1].numpy()
    positions = shadows.locate("train", forget_indices)
    scores = {}
    for name, m in (("unlearned", model), ("retrained", reference)):
        source = (signals or {}).get(name, {}).get("train")
        if source is None:
            phi = extract_signals(m, forget, device=device).phi[:, 0]
        else:  # the identity query, the first of any
            phi = source.phi[source.locate(forget_indices), 0]
        scores[name] = ulira(phi, shadows.phi(positions), shadows.unlearned_mask[:, positions],
                             shadows.out_mask[:, positions])
    table = pd.DataFrame(scores, index=pd.Index(forget_indices, name="index"))
    usable = np.isfinite(table).all(axis=1).to_numpy()
    if usable.sum() == 0:
        raise NotApplicable(f"none of the {len(table)} forget examples has both unlearned and never-seen shadows "
                            f"among the {len(shadows.unlearned_mask)} (train more shadows: --shadows 32 covers 97%)")
    summary = roc_summary(np.r_[table["unlearned"][usable], table["retrained"][usable]],
                          np.r_[np.ones(usable.sum()), np.zeros(usable.sum())])
    own_variance = usable & (shadows.unlearned_mask[:, positions].sum(axis=0) >= MIN_SHADOWS_FOR_VARIANCE) & (
        shadows.out_mask[:, positions].sum(axis=0) >= MIN_SHADOWS_FOR_VARIANCE)
    return {**summary, "scored": float(usable.sum()), "scored_per_example_variance": float(own_variance.sum()),
            "scored_global_variance": float(usable.sum() - own_variance.sum())}, table
