"""Dashboard sign-ins (``web_sessions``), each ``fn(session, ...)``: opened at a login,
found by the cookie's token hash, kept alive while used, closed at logout or when idle."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from xrayvision.db.models import WebSession


@dataclass(frozen=True)
class SignIn:
    username: str
    csrf: str
    last_seen: dt.datetime


def open_session(session: Session, token_hash: str, username: str, csrf: str,
                 now: dt.datetime, idle_before: dt.datetime) -> None:
    """Records a sign-in; sign-ins idle since before ``idle_before`` go (theirs or any)."""
    session.execute(delete(WebSession).where(WebSession.last_seen < idle_before))
    session.add(WebSession(token_hash=token_hash, username=username, csrf=csrf, created=now,
                           last_seen=now))


def find_session(session: Session, token_hash: str) -> SignIn | None:
    """The sign-in of this token hash; None when there is none (closed, expired, never)."""
    row = session.execute(select(WebSession.username, WebSession.csrf, WebSession.last_seen)
                          .where(WebSession.token_hash == token_hash)).first()
    return SignIn(*row) if row is not None else None


def touch_session(session: Session, token_hash: str, now: dt.datetime) -> None:
    """The sign-in was used now (its idle time starts again)."""
    session.execute(update(WebSession).where(WebSession.token_hash == token_hash)
                    .values(last_seen=now))


def close_session(session: Session, token_hash: str) -> None:
    """Ends a sign-in (logout, or found idle too long)."""
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash))
