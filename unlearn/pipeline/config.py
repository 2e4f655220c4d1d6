"""Every setting of ``unlearn run`` as one dataclass, read from and written to TOML.

A run folder keeps the resolved settings in ``config.toml``; ``unlearn run --config OUT/config.toml`` (or
``run(RunConfig.from_toml(...))``) repeats the run, reusing every finished stage.

>>> config = RunConfig(epochs=2, forget="high:5", method_config={"epochs": 3})
>>> RunConfig.from_toml_text(config.to_toml()) == config
True
>>> RunConfig.from_mapping({"epoch": 2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown run setting 'epoch'; expected some of [...]
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

import proxies

from ..algorithms.registry import get_method, make_config, takers
from ..data.selection import parse_forget_spec
from ..data.sources import check_dataset_name, dataset_kind
from ..evaluation.attacks import DEFAULT_ATTACKS, get_attack
from ..models import get_model
from ..training.augment import get_augmentation
from ..training.trainer import NUMERICS, RECIPES, TrainConfig, check_numerics, check_recipe, resolve_device

__all__ = ["DEFAULT_PROXIES", "MAX_MODELS", "MIN_TRAIN_SIZE", "RUN_POLICIES", "RunConfig", "TEXT_DEFAULTS",
           "TEXT_PROXIES"]

DEFAULT_PROXIES = (*proxies.RECORDING_PROXIES, "loss_curvature")
"""What ``unlearn run`` computes on images unless ``proxies`` says otherwise."""

TEXT_PROXIES = ("confidence", "max_confidence", "negative_entropy", "token_accuracy", "csl", "csg", "loss_iqr",
                "exact_memorization")
"""What ``unlearn run`` computes on text unless ``proxies`` says otherwise: the recording's proxies that vary over
sequences (exact match, and the learning events of it, are constant where no sequence is ever exactly right) and a
forward pass's exact memorization (benchmarks/README.md, "Language models on fortunes")."""

TEXT_DEFAULTS = {"train_size": 500, "canaries": 12, "vocab_size": 2048, "max_tokens": 64, "forget": "canaries",
                 "proxy": "token_accuracy", "proxies": list(TEXT_PROXIES), "attacks": ["loss_threshold", "loss_logreg"]}
"""The defaults of a run on text (``--dataset fortunes``): 500 fortunes (the whole job in a few minutes on two cores)
and 12 secrets inserted 1 to 32 times, every copy of every one to forget, sequences grouped by their token accuracy
over training. ``text:PATH`` (your own corpus) trains on all of it and gets no canaries by default, and then
``forget`` defaults to ``random:0.1``."""


def run_proxies(task: str) -> list[str]:
    """The proxies ``unlearn run`` can compute on examples of the task named ``task``: from the recording, or from
    the model and the training set alone (not the subset models' ground truth, which ``--fz-models`` adds, nor the
    proxies that need canaries or extraction lengths).

    >>> "loss_curvature" in run_proxies("classification"), "token_accuracy" in run_proxies("causal_lm")
    (True, True)
    """
    usable = {"recording"}, {"model", "data"}, {"model", "data", "holdout", "fine_tune"}

    def runnable(proxy) -> bool:  # nothing it requires beyond what a run hands every proxy
        required = {p.name for p in inspect.signature(proxy.fn).parameters.values()
                    if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}
        return set(proxy.needs) in usable and required <= set(proxy.needs)

    return [name for name in proxies.available()
            if proxies.get_proxy(name).scores(task) and runnable(proxies.get_proxy(name))]


IMAGE_DEFAULTS = {"forget": "random:0.1", "proxy": "confidence", "proxies": list(DEFAULT_PROXIES),
                  "attacks": list(DEFAULT_ATTACKS)}
"""The defaults of a run on images."""

RUN_POLICIES = {"images": "random_label_to_expected", "text": "npo_graded"}
"""The policy a run's ``rum`` follows when none is named, by the kind of data. Not the library's default
(:func:`unlearn.unlearn` follows the RUM paper's ``finetune_salun``): a command must not cost more than retraining
unasked, and the paper's recipe fine-tunes 10 epochs over the whole retain set, 5.1x retraining on a 3-epoch
Fashion-MNIST recipe. ``random_label_to_expected`` trains only on the medium and high groups and a retain sample of
16 per forget example, at most 11 epochs (so its cost follows the request, not the retain set), and met all three
targets of ``benchmarks/bench_unlearn.py`` on digits at 12-17% of retraining (benchmarks/README.md); on text,
``npo_graded`` (15% of retraining on the canary request)."""

TEXT_OPTIONS = ("canaries", "vocab_size", "max_tokens")
"""The settings of text datasets alone (:func:`unlearn.data.text.load_text`'s)."""

MAX_MODELS = 10_000
"""The most shadow or subset models a run may ask for (the LiRA paper used 256, Feldman and Zhang 4,000)."""

MIN_TRAIN_SIZE = 10
"""The smallest ``train_size``: a forget set, a retain set and the attacks' cross-validation need examples."""


@dataclass
class RunConfig:
    """The settings of ``unlearn run``, with its defaults; each field is the command-line option of the same name
    (``train_size`` is ``--train-size``). ``None`` for a training field means the recipe's value: the recipe named
    ``recipe`` (:data:`unlearn.training.RECIPES`), by default the dataset's (:meth:`training_recipe` is the result).
    """

    # data (dataset: a name of unlearn.data.datasets(), imagefolder:PATH, torchvision:CLASS or text:PATH)
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    train_size: int | None = None
    val_fraction: float = 0.1
    stream: bool = False
    num_workers: int = 0
    # text datasets alone (None: TEXT_DEFAULTS; canaries 0 for text:PATH)
    canaries: int | None = None
    vocab_size: int | None = None
    max_tokens: int | None = None
    # training (None: the recipe's; recipe None: the dataset's recipe)
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    augment: str | None = None
    seed: int = 0
    device: str | None = None
    checkpoints: int = 3
    # how the original model's training computes (None: the recipe's: fp32, contiguous, not forced deterministic)
    precision: str | None = None
    channels_last: bool | None = None
    deterministic: bool | None = None
    # unlearning (None: the data's default, IMAGE_DEFAULTS or TEXT_DEFAULTS)
    forget: str | None = None
    select_by: str | None = None
    method: str = "rum"
    proxy: str | None = None
    proxies: list[str] | None = None
    grouping: str = "training_set"
    policy: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)
    # evaluation
    attacks: list[str] | None = None
    shadows: int = 0
    fz_models: int = 0
    klom: int = 0
    # model farm
    farm: str = "local"
    ray_address: str | None = None
    gpus_per_model: float | None = None
    # output
    out: str | None = None
    force: bool = False
    rows: int = 10

    def __post_init__(self) -> None:
        """Fill the settings left None whose default depends on the kind of data (images or text)."""
        text = self.kind == "text"
        defaults = dict(TEXT_DEFAULTS if text else IMAGE_DEFAULTS)
        if text and self.dataset != "fortunes":  # your own corpus: all of it, no canaries unless asked
            defaults.update(canaries=0, train_size=None)
        if text and (self.canaries if self.canaries is not None else defaults["canaries"]) == 0:
            defaults["forget"] = IMAGE_DEFAULTS["forget"]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)

    # ------------------------------------------------------------------------------------------- derived
    @property
    def chosen_policy(self) -> str | None:
        """The policy the run's method follows: ``policy``, else (for a method that takes one, ``rum``, without a
        ``policy`` in ``method_config``) the run's default for its kind of data (:data:`RUN_POLICIES`); None for
        other methods."""
        if self.policy is not None or "policy" in self.method_config or not get_method(self.method).takes("policy"):
            return self.policy
        return RUN_POLICIES[self.kind]

    @property
    def kind(self) -> str:
        """The kind of data the dataset holds: ``"images"`` or ``"text"`` (:func:`unlearn.data.dataset_kind`)."""
        return dataset_kind(self.dataset)

    @property
    def task(self) -> str:
        """The :attr:`proxies.tasks.Task.name` of the data's examples."""
        return "causal_lm" if self.kind == "text" else "classification"

    def text_options(self) -> dict:
        """The text dataset's options for :func:`unlearn.data.load_dataset` (none for images)."""
        return {name: getattr(self, name) for name in TEXT_OPTIONS} if self.kind == "text" else {}

    @property
    def folder(self) -> Path:
        """The output folder: ``out``, else ``runs/<dataset>`` (``runs/imagefolder-pets`` for
        ``imagefolder:/data/pets``, ``runs/torchvision-KMNIST`` for ``torchvision:KMNIST``)."""
        if self.out is not None:
            return Path(self.out)
        kind, colon, argument = self.dataset.partition(":")
        return Path("runs") / (f"{kind}-{Path(argument).name or 'data'}" if colon else self.dataset)

    def training_recipe(self) -> TrainConfig:
        """The training recipe: the one named ``recipe`` (else the dataset's), with the fields set here
        (``augment`` and :data:`unlearn.training.NUMERICS` included: ``precision``, ``channels_last``,
        ``deterministic``).

        Raises:
            ValueError: an unknown ``recipe`` or ``augment``, naming the known ones.
        """
        if self.recipe is None:
            recipe = RECIPES.get(self.dataset, TrainConfig())
        else:
            try:
                recipe = RECIPES.get(self.recipe)
            except ValueError as err:
                raise ValueError(f"--recipe: {err}") from None
        if self.augment is not None:
            try:
                get_augmentation(self.augment)
            except (TypeError, ValueError) as err:
                raise ValueError(f"--augment: {err}") from None
        overrides = {k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay",
                                                   "schedule", "augment", *NUMERICS) if getattr(self, k) is not None}
        check_numerics(**{k: overrides.get(k, getattr(recipe, k)) for k in NUMERICS},
                       label=lambda name: f"--{name.replace('_', '-')}")
        return dataclasses.replace(recipe, **overrides)

    def recipe_settings(self) -> dict:
        """What a run records of the recipe it trains with, beside the recipe's values: its name, where one is
        given that is not the dataset's own (``{"recipe": name}``; else nothing, so that a run without
        ``--recipe`` records what it did before recipes had names). Another name is other settings."""
        if self.recipe is None or self.recipe == self.dataset:
            return {}
        return {"recipe": self.recipe}

    def farm_options(self) -> dict:
        if self.farm != "ray":
            return {}
        return {k: v for k, v in (("address", self.ray_address), ("gpus_per_model", self.gpus_per_model))
                if v is not None}

    def resolved_device(self) -> torch.device:
        """``device``, or CUDA when there is one; checked to exist on this machine."""
        try:
            return resolve_device(self.device)
        except ValueError as err:
            raise ValueError(f"--device {self.device}: {err}") from None

    def check(self) -> torch.device:
        """Everything the settings alone decide, checked before any data is read; returns the device. Messages
        name the command-line options."""
        try:
            check_dataset_name(self.dataset)
        except ValueError as err:
            raise ValueError(f"--dataset: {err}") from None
        device = self.resolved_device()
        self._check_model()
        recipe = self.training_recipe()
        check_recipe(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, momentum=recipe.momentum,
                     weight_decay=recipe.weight_decay, label=lambda name: f"--{name.replace('_', '-')}")
        if not (math.isfinite(self.val_fraction) and 0 < self.val_fraction < 1):
            raise ValueError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        if recipe.epochs < 1:
            raise ValueError(f"--epochs must be >= 1 (the recording and every proxy need a trained epoch), got "
                             f"{recipe.epochs}")
        if self.checkpoints < 1:
            raise ValueError(f"--checkpoints must be >= 1, got {self.checkpoints}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"--num-workers must be a whole number >= 0, got {self.num_workers!r}")
        if self.num_workers and not self.stream:
            raise ValueError("--num-workers reads a streamed dataset: pass --stream too (in memory, nothing is read)")
        if self.train_size is not None and self.train_size < MIN_TRAIN_SIZE:
            raise ValueError(f"--train-size must be >= {MIN_TRAIN_SIZE}, got {self.train_size}")
        for name in ("rows", "shadows", "fz_models", "klom"):
            value = getattr(self, name)
            if value < 0 or (name != "rows" and value > MAX_MODELS):
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and "
                                 f"{MAX_MODELS if name != 'rows' else 'the number of examples'}, got {value}")
        self._check_text()
        self._check_request()
        self._check_method()
        return device

    def _check_model(self) -> None:
        """The architecture exists, its options are a mapping and its weights a file."""
        if self.model is not None:
            try:
                get_model(self.model)
            except (ValueError, TypeError, ModuleNotFoundError) as err:
                raise ValueError(f"--model: {err}") from None
        if not isinstance(self.model_options, Mapping):
            raise TypeError(f"model_options must be a dict of the model factory's keywords, got "
                            f"{type(self.model_options).__name__}")
        if "weights" in self.model_options:
            raise ValueError("give the weights file as --weights, not as a model option")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"--weights {self.weights}: no such file (weights come only from a local file)")

    def _check_text(self) -> None:
        """The text settings: only for text, whole numbers in range; the proxies score the data's examples."""
        if self.kind != "text":
            given = [f"--{name.replace('_', '-')}" for name in TEXT_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} are settings of text datasets (fortunes, text:PATH), not of "
                                 f"{self.dataset}")
        else:
            for name, low in (("canaries", 0), ("vocab_size", 260), ("max_tokens", 8)):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        wrong = [n for n in self.proxies if n not in proxies.available() or not proxies.get_proxy(n).scores(self.task)]
        if wrong:
            raise ValueError(f"--proxies {wrong} do not score {self.kind} (of {self.dataset}); expected some of "
                             f"{run_proxies(self.task)}")

    @property
    def ranked_by(self) -> str:
        """What ranks the training set for a ``--forget`` spec by score: ``--select-by``, else Feldman-Zhang
        memorization when subset models are trained, else ``--proxy``."""
        return self.select_by or ("memorization" if self.fz_models else self.proxy)

    def _check_request(self) -> None:
        """The forget spec, the shadow models and what ranks the request."""
        spec = parse_forget_spec(self.forget)
        if spec.kind == "canaries" and not self.canaries:
            raise ValueError("--forget canaries removes the canaries of a text dataset: pass --canaries K (K > 0) "
                             "with --dataset fortunes or text:PATH")
        if self.klom == 1:
            raise ValueError("--klom must be 0 (none) or N >= 2: a histogram of one model's margin says little")
        if self.klom and self.kind == "text":
            raise ValueError("--klom compares classifiers' margins (z_y - logsumexp of the others); a language model "
                             "has none: leave it out on text")
        if self.shadows and (self.shadows < 4 or self.shadows % 2):
            raise ValueError(f"--shadows must be an even number >= 4 (RMIA holds one out), got {self.shadows}")
        shadowed = [name for name in self.attacks if get_attack(name).needs_shadows]
        if shadowed and not self.shadows:
            raise ValueError(f"--attacks {' '.join(shadowed)} needs shadow models: add --shadows K (even, >= 4; "
                             "16 and more for stable scores)")
        if self.ranked_by == "memorization" and not self.fz_models:
            raise ValueError("--select-by memorization needs ground-truth scores: add --fz-models K")
        if self.proxy not in self.proxies:
            raise ValueError(f"--proxy {self.proxy} must be one of the --proxies {self.proxies}")
        if self.ranked_by not in (*self.proxies, "memorization"):
            raise ValueError(f"--select-by must be memorization or one of the --proxies {self.proxies}, "
                             f"got {self.ranked_by!r}")
        if spec.kind == "ids" and not spec.path.is_file():
            raise ValueError(f"--forget {self.forget}: no such file {spec.path}")

    def _check_method(self) -> None:
        """The method's own options, before any work: ``--policy`` only for a method that has one, and
        ``--method-config`` settings the method takes."""
        if self.policy and not get_method(self.method).takes("policy"):
            raise ValueError(f"--policy is for --method {' / '.join(takers('policy'))}, not {self.method}")
        if self.method_config:
            try:
                make_config(get_method(self.method), self.method_config)
            except (TypeError, ValueError) as err:
                raise ValueError(f"--method-config: {err}") from None

    # ------------------------------------------------------------------------------------------------ TOML
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config from ``{setting: value}`` (a TOML file's table); unknown settings are refused. ``recipe_name``,
        what config files of earlier versions call ``recipe``, is read as ``recipe``."""
        known = [f.name for f in fields(cls)]
        values = dict(values)
        if "recipe_name" in values and "recipe" not in values:
            values["recipe"] = values.pop("recipe_name")
        for key in values:
            if key not in known:
                raise ValueError(f"unknown run setting {key!r}; expected some of {known}")
        return cls(**dict(values))

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "the config") -> RunConfig:
        return cls.from_mapping(_toml_values(text, source))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> RunConfig:
        """Read a config file written by :meth:`to_toml` (or by hand: any subset of the settings). A relative path
        in it (``out``, ``root``, ``weights``, a dataset's ``imagefolder:PATH`` / ``text:PATH``, a forget spec's
        ``ids:FILE``) is resolved against the file's folder, so the file means the same from any directory."""
        path = Path(path)
        values = _toml_values(path.read_text(), str(path))
        folder = path.resolve().parent
        return cls.from_mapping(_with_paths(values, lambda p: p if Path(p).is_absolute() else str(folder / p)))

    def to_toml(self) -> str:
        """The settings as TOML, one per line; unset ones (None) are left out, as TOML has no null, and ``force``
        too: it is a choice of one invocation, not a setting of the run. Paths are written absolute (resolved
        against the working directory), so the file repeats the run from anywhere."""
        lines = ["# unlearn run settings: `unlearn run --config THIS_FILE` repeats the run"]
        tables = []
        values = _with_paths({f.name: getattr(self, f.name) for f in fields(self)}, lambda p: str(Path(p).resolve()))
        for f in fields(self):
            value = values[f.name]
            if value is None or f.name == "force":
                continue
            if isinstance(value, Mapping):
                tables += ["", f"[{f.name}]", *(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items())]
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines + tables) + "\n"


PATH_SETTINGS = {"out": "", "root": "", "weights": "", "dataset": ("imagefolder:", "text:"), "forget": ("ids:",)}
"""The settings that hold a path: the whole value, or what follows one of the prefixes."""


def _toml_values(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source} is not TOML: {err}") from None


def _with_paths(values: Mapping[str, Any], convert) -> dict[str, Any]:
    """``values`` with every path in them (:data:`PATH_SETTINGS`) passed through ``convert``."""
    out = dict(values)
    for key, prefixes in PATH_SETTINGS.items():
        value = out.get(key)
        if not isinstance(value, str):
            continue
        if not prefixes:
            out[key] = convert(value)
        for prefix in prefixes:
            if value.startswith(prefix) and len(value) > len(prefix):
                out[key] = prefix + convert(value[len(prefix):])
    return out


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
