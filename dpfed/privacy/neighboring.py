"""Neighbouring relations: which two datasets a differential-privacy guarantee compares.

The relation is a choice of the analysis, made once per run (``dp.neighboring``)
and applied the same way by every mechanism:

- ``replace_one``: one unit's data (a user's, or a record's) is replaced by any
  other. A clipped contribution can then move a sum by twice the clip, so a
  mechanism whose noise std is ``z * clip`` releases a Gaussian with noise
  multiplier ``z / 2``. The strictest, and the default for fixed-size and
  shuffled cohorts.
- ``zero_out``: one unit's data is replaced by nothing (a unit that contributes
  zero to every released quantity; "replace-with-special" in Kairouz et al.
  2021). Sensitivity one clip. What most federated papers report (McMahan et al.
  2018, Andrew et al. 2021, Kairouz et al. 2021).
- ``add_remove``: one unit is added or removed. Sensitivity one clip; needs a
  sampling whose outcome does not reveal the population size, i.e. Poisson
  sampling, and is the default there.

dp-accounting names relations for the events it composes; `accounting_relation`
maps a (relation, sampling) pair to the one its events are composed under, or
says why the pair cannot be accounted.
"""

from __future__ import annotations

import enum

import dp_accounting

Relation = dp_accounting.NeighboringRelation


class Neighboring(enum.StrEnum):
    """The neighbouring relation of a run (``dp.neighboring``)."""

    replace_one = "replace_one"
    zero_out = "zero_out"
    add_remove = "add_remove"


def sensitivity_factor(neighboring: Neighboring) -> float:
    """How many clips one unit can move a clipped sum by: 2 under replace-one, else 1."""
    return 2.0 if neighboring == Neighboring.replace_one else 1.0


# dp-accounting's relations by name (summary.json records the name)
RELATION_NAMES = {
    Relation.ADD_OR_REMOVE_ONE: "add_or_remove_one",
    Relation.REPLACE_ONE: "replace_one",
    Relation.REPLACE_SPECIAL: "replace_special",
}
RELATIONS_BY_NAME = {name: relation for relation, name in RELATION_NAMES.items()}

# For releases that credit no sampling (unsampled Gaussian or Laplace events, composed per
# epoch or per participation) the relation only names the analysis: dp-accounting composes
# those events the same way under every relation.
UNSAMPLED = {
    Neighboring.replace_one: Relation.REPLACE_ONE,
    Neighboring.zero_out: Relation.REPLACE_SPECIAL,
}
