"""Retrain from scratch on the retain set: the gold standard every other method is measured against.

Given the model's factory (``model_fn``) and the original training recipe, ``retrain`` builds exactly the model the
retrained reference of ``unlearn run`` is: ``torch.manual_seed(seed)``, a fresh model from the factory, then
:func:`unlearn.training.train` on the retain set with the recipe and ``seed``. The same seed and recipe give the same
weights, bit for bit (on the CPU; CUDA kernels may not be deterministic).

>>> import torch
>>> from torch.utils.data import Subset
>>> from unlearn import create_model, load_dataset, train, unlearn
>>> from unlearn.training import RECIPES
>>> splits = load_dataset("digits")
>>> forget, retain = Subset(splits.train, range(20)), Subset(splits.train, range(20, 120))
>>> recipe = {**RECIPES["digits"].as_kwargs(), "epochs": 1}
>>> model = create_model("digits_cnn", num_classes=10, in_channels=1)  # the model to unlearn from
>>> retrained = unlearn(model, forget=forget, retain=retain, method="retrain", seed=3,
...                     config={"model_fn": "digits_cnn", **recipe}).model
>>> _ = torch.manual_seed(3)  # the reference, as ``unlearn run`` trains it
>>> reference, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), retain, seed=3, device="cpu",
...                      progress=False, **recipe)
>>> all(torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), reference.state_dict().values()))
True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.sources import first_input, image_size
from ..models import create_model, get_model, is_model, models
from ..training.augment import get_augmentation
from ..training.trainer import NUMERICS, TrainConfig, train
from .registry import register_method
from .sgd import SGDConfig, num_classes


@dataclass
class RetrainConfig(SGDConfig):
    """The original training recipe (the fields and defaults of :class:`~unlearn.training.TrainConfig`, e.g.
    ``{**RECIPES["digits"].as_kwargs(), "model_fn": "digits_cnn"}``) and how to build the fresh model. ``augment``
    is the recipe's training-time augmentation: retraining presents the retain set augmented as the original
    training did (the other methods never augment).

    ``model_fn`` is the name of a registered model (built by :func:`~unlearn.models.create_model` with
    ``model_kwargs``, whose ``num_classes`` and ``in_channels`` default to the model's number of logits and the
    data's channels) or a callable that returns a new model (e.g. the ``model_fn`` of the shadow models). It is called
    right after ``torch.manual_seed(seed)``, the random state restored afterwards, so its own initialisation is kept.

    Without ``model_fn`` (the behaviour from before it existed, kept so that such calls run as they did), the model
    handed to the method is re-initialised in place by each layer's ``reset_parameters()`` under ``seed`` (see
    :func:`reinitialize`) and trained the same way. That is the factory's own initialisation only for a model whose
    factory keeps PyTorch's default layer init and builds its layers in the order they are registered
    (``digits_cnn`` and ``cnn28``; not torchvision's ``resnet18``, which initialises its convolutions and norms
    itself): pass ``model_fn`` for a retraining that is the reference's. A ``transformers`` model (``tiny_gpt``)
    is instead built afresh by its class from its own config under ``seed``: its own initialisation, whatever its
    layers (GPT-2's ``Conv1D`` has no ``reset_parameters``). A model given by name gets the sizes its factory
    takes (``vocab_size`` for a language model: the model's width).
    """

    epochs: int = TrainConfig.epochs
    lr: float = TrainConfig.lr
    batch_size: int = TrainConfig.batch_size
    momentum: float = TrainConfig.momentum
    weight_decay: float = TrainConfig.weight_decay
    schedule: str = TrainConfig.schedule
    drop_last: bool = TrainConfig.drop_last
    augment: str = TrainConfig.augment
    model_fn: str | Callable[[], nn.Module] | None = None
    model_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_accuracy is not None:
            raise ValueError("retrain cannot stop at a target_accuracy: it starts from scratch, where the forget "
                             "accuracy is already low")
        if not isinstance(self.drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {type(self.drop_last).__name__} {self.drop_last!r}")
        get_augmentation(self.augment)  # an unknown name fails before any work
        if isinstance(self.model_fn, str):
            if not is_model(self.model_fn):
                raise ValueError(f"unknown model {self.model_fn!r}; expected one of {models()}, timm:NAME, "
                                 "torchvision:NAME or a callable")
        elif self.model_fn is not None and not callable(self.model_fn):
            raise TypeError("model_fn must be a registered model's name, a callable returning a new model or None, "
                            f"got {type(self.model_fn).__name__}")
        if not isinstance(self.model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        if self.model_kwargs and not isinstance(self.model_fn, str):
            raise ValueError("model_kwargs are for a model_fn given by name; a callable takes no arguments")

    def recipe(self) -> dict:
        """The keyword arguments of :func:`~unlearn.training.train` this config sets: the optimisation recipe and its
        training-time augmentation and optimizer (``augment`` and ``optimizer``, left out at their defaults, as
        :meth:`~unlearn.training.TrainConfig.as_kwargs` leaves it out); the arithmetic settings
        (:data:`~unlearn.training.NUMERICS`: precision, channels_last, deterministic) are train()'s defaults."""
        defaults = {"augment": TrainConfig.augment, "optimizer": TrainConfig.optimizer}
        return {f.name: getattr(self, f.name) for f in fields(TrainConfig)
                if f.name not in NUMERICS and (f.name not in defaults or getattr(self, f.name) != defaults[f.name])}


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Reset every layer's parameters (``reset_parameters``, or ``_reset_parameters`` as attention layers have it)
    with a seeded generator, in place; the CPU's random state and the model's GPU's are left as they were.

    Raises:
        ValueError: a module holds parameters of its own but has no reset method: retraining would start from
            those trained values, so it is refused.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stale = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for name, module in model.named_modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
            else:
                stale += [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
    if stale:
        raise ValueError(f"retrain cannot re-initialise parameters {stale}: their modules have no "
                         "reset_parameters() (a vision transformer's class token and position embedding); pass "
                         "model_fn= (the model's name, e.g. 'vit_mini' or 'timm:NAME', or a factory) to retrain a "
                         "freshly built one")
    return model


def _built_from_config(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model, which its class builds afresh from its ``config``."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def fresh_model(config: RetrainConfig, like: nn.Module, data: Dataset, seed: int,
                device: torch.device) -> nn.Module:
    """A new model from ``config.model_fn``, built right after ``torch.manual_seed(seed)`` (the random state is
    restored afterwards).

    Raises:
        ValueError: the new model's parameters and buffers have other names or shapes than ``like``'s.
    """
    build = config.model_fn
    if isinstance(build, str):
        # the sizes the factory takes: an image classifier's classes and channels, a language model's vocabulary
        width, shape = num_classes(like, data, device), first_input(data).shape
        sizes = {"num_classes": width, "in_channels": int(shape[1]), "vocab_size": width}
        if len(shape) == 4:  # images: their size, for a vision transformer
            sizes["img_size"] = image_size(shape)
        takes = inspect.signature(get_model(build)).parameters
        sizes = {k: v for k, v in sizes.items() if k in takes}
        build = functools.partial(create_model, build, **{**sizes, **config.model_kwargs})
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn returned {type(model).__name__}, not an nn.Module")
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = {name: tuple(t.shape) for name, t in like.state_dict().items()}
    if shapes != expected:
        differ = sorted(name for name in shapes.keys() | expected.keys() if shapes.get(name) != expected.get(name))
        raise ValueError(f"model_fn builds a model whose parameters differ from the model's: {differ[:3]}"
                         f"{' ...' if len(differ) > 3 else ''} (name -> shape: {[shapes.get(n) for n in differ[:3]]} "
                         f"vs {[expected.get(n) for n in differ[:3]]})")
    return model


@register_method("retrain", config=RetrainConfig)
def retrain(model, forget, retain, config: RetrainConfig, *, seed, device):
    """Retrain a freshly initialised copy of the architecture on the retain set only."""
    if config.model_fn is not None:
        start = fresh_model(config, model, retain, seed, device)
    elif _built_from_config(model):  # a transformers model: a new one of its class from its own config
        start = fresh_model(replace(config, model_fn=functools.partial(type(model), model.config)), model, retain,
                            seed, device)
    else:
        start = reinitialize(model, seed)
    retrained, _ = train(start, retain, seed=seed, device=device, progress=False, **config.recipe())
    return retrained
