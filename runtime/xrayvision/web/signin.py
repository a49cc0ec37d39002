"""The dashboard's sign-in: ``POST /api/session`` (user name and password, through the
same login guard as HTTP Basic) sets an HttpOnly, SameSite=Strict session cookie and
answers the CSRF token the page sends with every change; ``DELETE /api/session`` signs
out. Sign-ins live in the database (``web_sessions``: every web pod knows them) and end
after ``[web] session_idle`` seconds unused. API clients keep using HTTP Basic."""

from __future__ import annotations

import datetime as dt
import secrets

from aiohttp import web

from xrayvision.db import repo
from xrayvision.db.models import utcnow
from xrayvision.web.api import json_body
from xrayvision.web.context import CLIENT_IP, IDENTITY, SERVICES, SESSION_CSRF, SETTINGS
from xrayvision.web.middleware import (
    SESSION_COOKIE,
    check_password,
    error,
    signed_in,
    token_hash,
)
from xrayvision.web.ratelimit import in_networks


def _https(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS: directly, or through a trusted proxy
    (the Ingress) that says so."""
    if request.secure:
        return True
    return in_networks(request.remote or "", request.app[SETTINGS].web.trusted_proxies) \
        and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


async def sign_in(request: web.Request) -> web.StreamResponse:
    db = request.app[SERVICES].db
    if db is None:
        return error(503, "unavailable", "starting: try again in a few seconds",
                     {"Retry-After": "5"})
    body = await json_body(request)
    name, password = body.get("username"), body.get("password")
    if not isinstance(name, str) or not name or not isinstance(password, str):
        return error(400, "bad_request", "send {\"username\": ..., \"password\": ...} as JSON")
    checked = await check_password(request, name, password)
    if isinstance(checked, web.Response):
        return checked
    token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), utcnow()
    idle = request.app[SETTINGS].web.session_idle
    await db.write(repo.open_session, token_hash(token), checked.username, csrf, now,
                   now - dt.timedelta(seconds=idle))
    response = web.json_response({"user": checked.username, "role": checked.role,
                                  "csrf": csrf})
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/",
                        secure=_https(request))
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """Ends this sign-in (the cookie's); with HTTP Basic there is nothing to end."""
    token = request.cookies.get(SESSION_COOKIE)
    db = request.app[SERVICES].db
    if token and SESSION_CSRF in request and db is not None:
        await db.write(repo.close_session, token_hash(token))
        await db.write(repo.audit, "logout", username=request[IDENTITY].username,
                       remote=request[CLIENT_IP])
    response = web.json_response({"signed_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def who(request: web.Request) -> web.StreamResponse:
    """Who this browser is signed in as, by its cookie: the user, role and CSRF token, or
    ``{"user": null}`` (200 either way: the page asks before it shows anything, and a
    401 would be a console error on every first visit)."""
    token = request.cookies.get(SESSION_COOKIE)
    found = await signed_in(request, token) if token else None
    if found is None:
        return web.json_response({"user": None, "role": None, "csrf": ""})
    identity, csrf = found
    return web.json_response({"user": identity.username, "role": identity.role, "csrf": csrf})


def setup_signin_routes(app: web.Application) -> None:
    app.router.add_get("/api/session", who)
    app.router.add_post("/api/session", sign_in)
    app.router.add_delete("/api/session", sign_out)
