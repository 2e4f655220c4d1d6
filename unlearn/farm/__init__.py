"""The model farm: train many models (subset models, shadow models) and keep each one's predictions on disk.
One model after another in this process (:mod:`.local`), packs of models as one vmapped ensemble (:mod:`.packed`),
or tasks on a Ray cluster (:mod:`.ray`, optional); the Feldman-Zhang subset models are trained through it
(:mod:`.subset_models`)."""

from .local import (
    Farm,
    FolderFarm,
    Job,
    LocalFarm,
    TrainTask,
    check_manifest,
    describe_factory,
    fingerprint,
    train_and_predict,
)
from .registry import farms, get_farm, register_farm
from .subset_models import memorization_scores, subset_jobs, train_subset_models

__all__ = ["Farm", "FolderFarm", "Job", "LocalFarm", "TrainTask", "check_manifest", "describe_factory", "farms",
           "fingerprint", "get_farm", "memorization_scores", "register_farm", "subset_jobs", "train_and_predict",
           "train_subset_models"]
