"""Training: :func:`train` with the recorder, recipes, DP and resume (:mod:`.trainer`); the one SGD epoch loop that
training and every unlearning method step through (:mod:`.loop`); training-time augmentation (:mod:`.augment`);
the recorder as a Lightning callback (:mod:`.lightning`, optional extra).
"""

from .augment import augmentations, get_augmentation
from .loop import BatchLoss, lr_factor, run_epochs, training_numerics
from .trainer import (
    NUMERICS,
    PRECISIONS,
    RECIPES,
    DPConfig,
    TrainConfig,
    get_recipe,
    load_checkpoint,
    predict,
    recipes,
    register_recipe,
    save_checkpoint,
    top1_accuracy,
    train,
)

__all__ = [
    "NUMERICS",
    "PRECISIONS",
    "RECIPES",
    "BatchLoss",
    "DPConfig",
    "TrainConfig",
    "augmentations",
    "get_augmentation",
    "load_checkpoint",
    "lr_factor",
    "predict",
    "get_recipe",
    "recipes",
    "register_recipe",
    "run_epochs",
    "save_checkpoint",
    "top1_accuracy",
    "train",
    "training_numerics",
]


_RENAMED = {"accuracy": "top1_accuracy", "recipe": "get_recipe"}


def __getattr__(name: str):
    if name in _RENAMED:  # 0.1's names, kept for a release
        import warnings

        warnings.warn(f"unlearn.training.{name} is now {_RENAMED[name]} (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'unlearn.training' has no attribute {name!r}")
