"""Built-in unlearning methods, one file each; importing this package registers them."""

from . import (  # noqa: F401
    finetune,
    influence,
    l1_sparse,
    neggrad,
    neggrad_plus,
    random_label,
    retrain,
    rum,
    salun,
    scrub,
)
