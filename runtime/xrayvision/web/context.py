"""Typed keys of what the web application shares (``app[KEY]``, ``request[KEY]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from xrayvision.config import Settings
from xrayvision.web.auth import Authenticator, Identity, LoginGuard
from xrayvision.web.ratelimit import SlidingWindow

if TYPE_CHECKING:
    from xrayvision.ai.text import TextServices
    from xrayvision.db.engine import Database
    from xrayvision.events import Bus
    from xrayvision.images import ImageStore
    from xrayvision.web.live import Hub


@dataclass
class Services:
    """Filled in by the ``web`` role once the database is up; until then /api answers 503."""

    db: Database | None = None
    bus: Bus | None = None
    store: ImageStore | None = None
    text: TextServices | None = None
    hub: Hub | None = None


MAX_BODY = 256 * 1024  # JSON bodies: report texts of at most 20,000 characters

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
AUTH = web.AppKey("auth", Authenticator)
LOGIN_GUARD = web.AppKey("login_guard", LoginGuard)
LIMITER = web.AppKey("limiter", SlidingWindow)
IDENTITY = web.RequestKey("identity", Identity)
CLIENT_IP = web.RequestKey("client_ip", str)
SESSION_CSRF = web.RequestKey("session_csrf", str)  # set when signed in by the cookie
