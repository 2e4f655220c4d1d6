"""``method="rum"``: memorization-aware unlearning. Groups (:mod:`.grouping`), policies (:mod:`.policies`) and the
method itself with its result (:mod:`.method`) live here, and nothing outside this package asks for rum by name: the
pipeline and the report read what a method's registration and result say (its inputs, :meth:`RUMResult.facts`).
"""

from .grouping import GROUPINGS, Grouping, form_groups, group_names, group_of, group_thresholds, partition
from .method import RUMResult, plan_cost, rum
from .policies import (
    EXPECTED,
    POLICIES,
    RUMConfig,
    get_policy,
    policies,
    register_policy,
    resolve_policy,
    retain_sample,
)

__all__ = ["EXPECTED", "GROUPINGS", "POLICIES", "Grouping", "RUMConfig", "RUMResult", "form_groups", "get_policy",
           "group_names", "group_of", "group_thresholds", "partition", "plan_cost", "policies", "register_policy",
           "resolve_policy", "retain_sample", "rum"]
