"""The aiohttp application: the composition root of everything served over HTTP.

Every process serves ``/healthz``, ``/readyz`` and ``/metrics``. With the ``web`` role the
REST API (``/api``), the WebSocket (``/ws``) and the dashboard (``/``, ``/static``) join;
their services (database, bus, model client) are filled in by the role once the database
is up (:mod:`xrayvision.roles.web`), and ``/api`` answers 503 until then.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from xrayvision.config import Settings
from xrayvision.web import middleware
from xrayvision.web.api import setup_api_routes
from xrayvision.web.auth import Authenticator, LoginGuard
from xrayvision.web.context import (
    AUTH,
    LIMITER,
    LOGIN_GUARD,
    MAX_BODY,
    SERVICES,
    SETTINGS,
    Services,
)
from xrayvision.web.health import READINESS, WEB_ROLE, Readiness, setup_health_routes
from xrayvision.web.ratelimit import SlidingWindow
from xrayvision.web.signin import setup_signin_routes


def static_dir() -> Path:
    """``static/`` of the source checkout (an editable install), else ``./static`` (the
    container image copies it next to the working directory)."""
    checkout = Path(__file__).resolve().parents[3] / "static"
    if (checkout / "index.html").is_file():
        return checkout
    return Path.cwd() / "static"


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_dir() / "index.html",
                            headers={"Cache-Control": "no-cache"})


def same_origin(origin: str | None, host: str) -> bool:
    """Whether a browser's ``Origin`` names the host it asked (``Host``); a request with
    no ``Origin`` (not a browser page: a script, a monitoring probe) passes."""
    if origin is None:
        return True
    parsed = urlsplit(origin)
    return bool(parsed.netloc) and parsed.netloc.lower() == host.lower()


async def websocket(request: web.Request) -> web.StreamResponse:
    # A page of another site must not open the dashboard's live feed with the browser's
    # stored credentials (cross-site WebSocket hijacking).
    if not same_origin(request.headers.get("Origin"), request.host):
        raise web.HTTPForbidden(text="cross-site WebSocket refused: the Origin is not this "
                                     "dashboard's")
    hub = request.app[SERVICES].hub
    if hub is None:
        raise web.HTTPServiceUnavailable(text="starting: live updates are not ready yet")
    return await hub.handle(request)


def init_app(settings: Settings, readiness: Readiness) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[middleware.observe, middleware.json_errors, middleware.rate_limit,
                     middleware.authenticate],
    )
    app[READINESS] = readiness
    app[SETTINGS] = settings
    app[SERVICES] = Services()
    app[AUTH] = Authenticator(settings.users)
    app[LOGIN_GUARD] = LoginGuard(max_failures=settings.web.login_max_failures,
                                  lockout=settings.web.login_lockout)
    app[LIMITER] = SlidingWindow(settings.web.rate_limit, 60.0)
    setup_health_routes(app)
    app[WEB_ROLE] = "web" in settings.server.roles
    if app[WEB_ROLE]:
        setup_api_routes(app)
        setup_signin_routes(app)
        app.router.add_get("/ws", websocket)
        app.router.add_get("/", index)
        app.router.add_static("/static/", static_dir(), append_version=False)
    return app
