"""The queue's counts by status for the dashboard, and the oldest claimable exam."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    func,
    select,
    text,
)
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    CLAIMABLE,
    STATUSES,
    Exam,
    Study,
)


def queue_counts(session: Session, *, studies: bool = False) -> dict[str, int]:
    """Number of exams, or ``studies``, in every status (zeros included): the
    dashboard's queue sizes."""
    unit: Any = Study if studies else Exam
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in session.execute(select(unit.status, func.count()).group_by(unit.status)):
        counts[status] = n
    return counts


def oldest_claimable(session: Session) -> dt.datetime | None:
    """Receipt time of the oldest exam waiting for the model (None when the queue is empty)."""
    return session.scalar(select(func.min(Exam.created)).where(Exam.status.in_(CLAIMABLE)))



def newest_exam_row(session: Session) -> int:
    """SQLite only: the highest row number of ``exams`` (grows with every new exam,
    whichever process inserted it; read from the end of the table's b-tree, O(1))."""
    return int(session.execute(text("SELECT max(rowid) FROM exams")).scalar() or 0)
