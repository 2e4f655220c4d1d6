"""Training: :func:`train` with the recorder, recipes, DP and resume (:mod:`.trainer`); the one SGD epoch loop that
training and every unlearning method step through (:mod:`.loop`); training-time augmentation (:mod:`.augment`);
the recorder as a Lightning callback (:mod:`.lightning`, optional extra).

>>> from unlearn.data import load_dataset
>>> from unlearn.models import create_model
>>> splits = load_dataset("digits")
>>> model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), splits.train,
...                        epochs=1, progress=False)
>>> list(history.columns)
['epoch', 'lr', 'loss', 'accuracy', 'seconds']
"""

from .augment import augmentations, get_augmentation
from .loop import BatchLoss, lr_factor, run_epochs, training_numerics
from .trainer import (
    NUMERICS,
    PRECISIONS,
    RECIPES,
    DPConfig,
    TrainConfig,
    accuracy,
    load_checkpoint,
    predict,
    recipe,
    recipes,
    save_checkpoint,
    train,
)

__all__ = [
    "NUMERICS",
    "PRECISIONS",
    "RECIPES",
    "BatchLoss",
    "DPConfig",
    "TrainConfig",
    "accuracy",
    "augmentations",
    "get_augmentation",
    "load_checkpoint",
    "lr_factor",
    "predict",
    "recipe",
    "recipes",
    "run_epochs",
    "save_checkpoint",
    "train",
    "training_numerics",
]
