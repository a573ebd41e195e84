"""Point labels (V7): which rows of a point-label file a class selection counts. A
point counts when its class is selected, its `EstimatedYesNo` is the asked answer
(yes by default; `any` takes all) and it has at least `min_yes_votes` yes votes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from oidownload.dataset.kinds import POINTS

if TYPE_CHECKING:
    from oidownload.dataset.annotations import AnnotationTable


class PointAnswer(enum.StrEnum):
    YES = "yes"
    NO = "no"
    UNSURE = "unsure"
    ANY = "any"


def point_test(f: AnnotationTable, mids: frozenset[str], answer: PointAnswer,
               min_yes_votes: int) -> Callable[[list[str]], bool]:
    """A test on one point row's fields, as ClassFilter.predicate gives for other kinds."""
    assert f.kind is POINTS
    i_label, i_answer, i_yes = f.index("Label"), f.index("EstimatedYesNo"), f.index("YesVotes")
    want = None if answer is PointAnswer.ANY else answer.value

    def test(fields: list[str]) -> bool:
        if fields[i_label] not in mids or (want is not None and fields[i_answer] != want):
            return False
        if min_yes_votes <= 0:
            return True
        try:
            return int(fields[i_yes]) >= min_yes_votes
        except ValueError:
            return False

    return test
