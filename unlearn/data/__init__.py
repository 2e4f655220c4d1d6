"""Data: named datasets and dataset sources (:mod:`.sources`), text for causal language models (:mod:`.text`),
CIFAR-shaped data made on the fly (:mod:`.synthetic`) and forget-set requests (:mod:`.selection`). Every example
carries its training-set index; batching in memory or streamed is :mod:`proxies.batching`'s, re-exported here.
"""

from .adapters import FromDicts
from .sources import (
    DatasetNotFoundError,
    DatasetSpec,
    IndexedDataset,
    Splits,
    Streamed,
    WithIndex,
    as_tensors,
    batches,
    check_dataset_name,
    dataset_kind,
    dataset_sources,
    datasets,
    default_root,
    examples,
    first_input,
    get_dataset,
    join,
    labels_of,
    load_dataset,
    materialize,
    register_dataset,
    subset_root,
    take,
    tensor_batches,
)
from .synthetic import register_synthetic_cifar
from .text import TextSplits

register_synthetic_cifar("synthetic-cifar")  # CIFAR-10-shaped images made on the fly, for timing runs

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "FromDicts",
    "IndexedDataset",
    "Splits",
    "Streamed",
    "WithIndex",
    "as_tensors",
    "batches",
    "check_dataset_name",
    "dataset_kind",
    "dataset_sources",
    "datasets",
    "default_root",
    "examples",
    "first_input",
    "get_dataset",
    "join",
    "labels_of",
    "load_dataset",
    "materialize",
    "register_dataset",
    "register_synthetic_cifar",
    "subset_root",
    "take",
    "tensor_batches",
    "TextSplits",
]
