"""Shadow models' reads (``shadow_reads``) and their agreement per model with the
radiologists' reports and with the live model's reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, case, func, insert, select
from sqlalchemy.orm import Session

from xrayvision.agreement import Confusion
from xrayvision.db.models import AIReport, RadReport, ShadowRead, utcnow


def save_shadow_read(session: Session, uid: str, *, text: str, positive: int, severity: int,
                     confidence: int, summary: str, model: str, endpoint: str,
                     latency: float, prompt_version: str) -> ShadowRead:
    """Stores a shadow model's read of ``uid`` (an exam's or a study's key); the AI read
    and everything shown as one are untouched."""
    row = ShadowRead(uid=uid, text=text, positive=positive, severity=severity,
                     confidence=confidence, summary=summary[:500], model=model[:256],
                     endpoint=endpoint[:32], latency=latency, prompt_version=prompt_version)
    session.add(row)
    return row


def save_shadow_reads(session: Session, rows: list[dict[str, Any]]) -> None:
    """Stores several shadow reads at once (one INSERT of many rows: the relay writes the
    shadow's answers in batches); each row has the columns of :func:`save_shadow_read`
    and ``uid``."""
    if rows:
        now = utcnow()
        session.execute(insert(ShadowRead), [
            {**row, "summary": row["summary"][:500], "model": row["model"][:256],
             "endpoint": row["endpoint"][:32], "created": row.get("created", now)}
            for row in rows])


def _sums(left: Any, right: Any, threshold: int) -> list[Any]:
    """TP, TN, FP, FN and not-assessed sums of ``left`` against ``right`` (the
    reference) at ``threshold``, as :func:`agreement_condition` counts them."""
    lp, ln = left >= threshold, and_(left >= 0, left < threshold)
    rp, rn = right >= threshold, and_(right >= 0, right < threshold)
    classes = [and_(lp, rp), and_(ln, rn), and_(lp, rn), and_(ln, rp)]
    return [func.sum(case((c, 1), else_=0)) for c in classes] + [
        func.sum(case(((left < 0) | (right < 0), 1), else_=0))]


def _confusions(session: Session, query: Any) -> dict[str, Confusion]:
    found = {}
    for row in session.execute(query):
        tp, tn, fp, fn, na = (int(v or 0) for v in row[1:])
        found[str(row[0])] = Confusion(tp=tp, tn=tn, fp=fp, fn=fn, not_assessed=na)
    return found


def shadow_agreement(session: Session, threshold: int, since: dt.datetime | None = None,
                     until: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per shadow model (the latest shadow read of each unit, read within the window):
    ``reads``: units it read;
    ``radiologist``: the shadow against the radiologist's checked report; ``live``: the
    shadow against the live AI read of the same unit (the reference); ``live_radiologist``:
    the live read against the radiologist on the units the shadow read (the two models
    compared on the same studies)."""
    latest = select(func.max(ShadowRead.id).label("id")).group_by(ShadowRead.uid,
                                                                   ShadowRead.model)
    if since is not None:
        latest = latest.where(ShadowRead.created >= since)
    if until is not None:
        latest = latest.where(ShadowRead.created < until)
    ids = latest.subquery()
    base = select(ShadowRead.model).join(ids, ids.c.id == ShadowRead.id)
    rad = (base.add_columns(*_sums(ShadowRead.severity, RadReport.severity, threshold))
           .join(RadReport, and_(RadReport.uid == ShadowRead.uid, RadReport.checked.is_(True)))
           .group_by(ShadowRead.model))
    live = (base.add_columns(*_sums(ShadowRead.severity, AIReport.severity, threshold))
            .join(AIReport, AIReport.uid == ShadowRead.uid).group_by(ShadowRead.model))
    live_rad = (base.add_columns(*_sums(AIReport.severity, RadReport.severity, threshold))
                .join(AIReport, AIReport.uid == ShadowRead.uid)
                .join(RadReport, and_(RadReport.uid == ShadowRead.uid,
                                      RadReport.checked.is_(True)))
                .group_by(ShadowRead.model))
    parts = {"radiologist": _confusions(session, rad), "live": _confusions(session, live),
             "live_radiologist": _confusions(session, live_rad)}
    reads = {str(model): int(n) for model, n in session.execute(
        select(ShadowRead.model, func.count()).join(ids, ids.c.id == ShadowRead.id)
        .group_by(ShadowRead.model))}
    return {m: {name: part.get(m, Confusion()) for name, part in parts.items()}
            | {"reads": int(reads.get(m, 0))} for m in sorted(reads)}


def shadow_reads_of(session: Session, uid: str) -> list[ShadowRead]:
    """The shadow reads of ``uid``, oldest first."""
    return list(session.scalars(select(ShadowRead).where(ShadowRead.uid == uid)
                                .order_by(ShadowRead.id)))
