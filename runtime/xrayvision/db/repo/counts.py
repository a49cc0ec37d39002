"""The queue's counts by status for the dashboard, and the oldest claimable exam."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    CLAIMABLE,
    STATUSES,
    Exam,
)


def queue_counts(session: Session) -> dict[str, int]:
    """Number of exams in every status (zeros included): the dashboard's queue sizes."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in session.execute(select(Exam.status, func.count()).group_by(Exam.status)):
        counts[status] = n
    return counts


def oldest_claimable(session: Session) -> dt.datetime | None:
    """Receipt time of the oldest exam waiting for the model (None when the queue is empty)."""
    return session.scalar(select(func.min(Exam.created)).where(Exam.status.in_(CLAIMABLE)))

