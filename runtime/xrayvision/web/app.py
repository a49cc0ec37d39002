"""The aiohttp application: the composition root of everything served over HTTP."""

from __future__ import annotations

from aiohttp import web

from xrayvision.config import Settings
from xrayvision.web.health import METRICS_AUTH, READINESS, USERS, Readiness, setup_health_routes


def init_app(settings: Settings, readiness: Readiness) -> web.Application:
    """Builds the app. Every process serves health, readiness and metrics; the dashboard
    and the REST API join here when the web role is built (see the web issue)."""
    app = web.Application(client_max_size=1024 * 1024)
    app[READINESS] = readiness
    app[USERS] = settings.users
    app[METRICS_AUTH] = settings.web.metrics_auth
    setup_health_routes(app)
    return app
