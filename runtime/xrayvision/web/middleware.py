"""Middlewares, outermost first: metrics and security headers, JSON errors, rate limit,
authentication of ``/api/*``, ``/ws`` and, with ``[web] metrics_auth``, ``/metrics``: by
HTTP Basic (API clients) or the dashboard's sign-in cookie (``web/signin.py``).

Every error a client sees is JSON ``{"error": <short name>, "detail": <what to do>}``
with the matching status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from xrayvision import metrics
from xrayvision.db import repo
from xrayvision.db.engine import is_disk_full, is_transient
from xrayvision.db.models import utcnow
from xrayvision.web.auth import Authenticator, Identity, LoginGuard, parse_basic
from xrayvision.web.context import (
    AUTH,
    CLIENT_IP,
    IDENTITY,
    LIMITER,
    LOGIN_GUARD,
    MAX_BODY,
    SERVICES,
    SESSION_CSRF,
    SETTINGS,
)
from xrayvision.web.ratelimit import client_address, retry_after_header

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER_DB = 5  # seconds a client waits after a 503 for a database outage
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
OPEN_PATHS = {"/healthz", "/readyz"}


def error(status: int, name: str, detail: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": name, "detail": detail}, status=status, headers=headers)


def _route_name(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request metrics (by route template) and security headers on every answer."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers.update(SECURITY_HEADERS)
        raise
    finally:
        metrics.HTTP_REQUEST_SECONDS.labels(_route_name(request), request.method,
                                            str(status)).observe(time.perf_counter() - started)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "too_large", f"request body over the limit of {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else (
            exc.reason)
        response = error(exc.status, exc.reason.lower().replace(" ", "_"), detail)
        for key in ("Allow", "Retry-After", "WWW-Authenticate"):
            if key in exc.headers:
                response.headers[key] = exc.headers[key]
        return response
    except asyncio.CancelledError:
        raise
    except SQLAlchemyError as exc:
        if not is_transient(exc):
            log.exception("request failed", extra={"path": request.path})
            return error(500, "internal_error", "the server failed on this request; see its log")
        # An outage, not a bug: clients may try again (readiness is false meanwhile).
        if is_disk_full(exc):
            log.warning("request failed: the database's disk is full",
                        extra={"path": request.path})
            response = error(503, "storage_full", "the database's disk is full; an "
                             "administrator must free space, then try again")
        else:
            log.warning("request failed: database unavailable", extra={"path": request.path})
            response = error(503, "database_unavailable",
                             "the database cannot be reached; try again shortly")
        response.headers["Retry-After"] = str(RETRY_AFTER_DB)
        return response
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        return error(500, "internal_error", "the server failed on this request; see its log")


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    peer = request.remote or ""
    ip = client_address(peer, request.headers.get("X-Forwarded-For", ""),
                        settings.web.trusted_proxies)
    request[CLIENT_IP] = ip
    if request.path in OPEN_PATHS:
        return await handler(request)
    wait = request.app[LIMITER].hit(ip)
    if wait:
        metrics.RATE_LIMITED.inc()
        return error(429, "rate_limited",
                     f"more than {settings.web.rate_limit} requests a minute; slow down",
                     {"Retry-After": retry_after_header(wait)})
    return await handler(request)


SESSION_COOKIE = "xrv_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOUCH_AFTER = dt.timedelta(seconds=60)  # a sign-in's last use is written at most this often
PAGE_HEADER = ("X-Requested-With", "XRayVision")  # sent by the dashboard's own requests


def _needs_auth(request: web.Request) -> bool:
    path = request.path
    if path == "/api/session" and request.method in ("GET", "POST"):  # who, sign in
        return False
    if path.startswith("/api/") or path == "/ws":
        return True
    return path == "/metrics" and request.app[SETTINGS].web.metrics_auth


def _challenge(request: web.Request) -> dict[str, str]:
    """The Basic challenge for API clients; none for the dashboard's own requests, over
    whose sign-in page the browser would otherwise put its own password dialog."""
    if request.headers.get(PAGE_HEADER[0]) == PAGE_HEADER[1]:
        return {}
    return {"WWW-Authenticate": 'Basic realm="xrayvision", charset="UTF-8"'}


async def check_password(request: web.Request, name: str,
                         password: str) -> Identity | web.Response:
    """A user name and password (HTTP Basic or the sign-in page) through the login guard:
    the identity, or the error response (wrong: 401, locked out: 429). Logins, failures
    and lockouts are audited."""
    auth: Authenticator = request.app[AUTH]
    ip = request[CLIENT_IP]
    services = request.app[SERVICES]
    name = name[:128]
    identity, fresh = auth.cached(name, password), False
    if identity is None:  # not a credential verified lately: a login, perhaps a guess
        guard: LoginGuard = request.app[LOGIN_GUARD]
        verdict = guard.begin(ip, name)
        if verdict.locked:
            metrics.AUTH_FAILURES.labels("locked").inc()
            if verdict.newly:
                log.warning("logins locked out after repeated failures",
                            extra={"locked": verdict.locked, "remote": ip,
                                   "seconds": verdict.retry_after})
                if services.db is not None:
                    await services.db.write(
                        repo.audit, "login.locked", username=name, remote=ip,
                        detail=f"{verdict.locked} locked for {verdict.retry_after} s")
            return error(429, "locked_out", "too many failed logins; try again in "
                         f"{verdict.retry_after} s", {"Retry-After": str(verdict.retry_after)})
        ok = False
        try:
            await asyncio.sleep(verdict.wait)
            identity, fresh = await auth.verify(name, password)
            ok = identity is not None
        finally:
            guard.end(ip, name, ok)
    if identity is None:
        metrics.AUTH_FAILURES.labels("wrong").inc()
        if services.db is not None:
            await services.db.write(repo.audit, "login.failed", username=name, remote=ip)
        return error(401, "unauthorized", "wrong username or password", _challenge(request))
    if fresh and services.db is not None:
        await services.db.write(repo.audit, "login", username=identity.username, remote=ip)
    return identity


def token_hash(token: str) -> str:
    """What is stored of a session cookie's token (pure)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def signed_in(request: web.Request, token: str) -> tuple[Identity, str] | None:
    """The identity and CSRF token of a sign-in cookie; None when it is unknown, ended,
    idle longer than ``[web] session_idle`` (then ended) or its user is gone."""
    db = request.app[SERVICES].db
    if db is None:
        return None
    key = token_hash(token)
    found = await db.read(repo.find_session, key)
    if found is None:
        return None
    now = utcnow()
    user = request.app[AUTH].users.get(found.username)
    idle = dt.timedelta(seconds=request.app[SETTINGS].web.session_idle)
    if user is None or now - found.last_seen > idle:
        await db.write(repo.close_session, key)
        return None
    if now - found.last_seen > TOUCH_AFTER:
        await db.write(repo.touch_session, key, now)
    return Identity(found.username, user.role), found.csrf


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic (API clients, /metrics) or the dashboard's sign-in cookie; a change asked
    for with the cookie must carry its CSRF token (``X-CSRF-Token``)."""
    if not _needs_auth(request):
        return await handler(request)
    header = request.headers.get("Authorization")
    token = request.cookies.get(SESSION_COOKIE)
    if header is None and token:
        found = await signed_in(request, token)
        if found is None:
            metrics.AUTH_FAILURES.labels("session").inc()
            return error(401, "unauthorized", "the sign-in has ended (signed out, or unused "
                         "too long): sign in again", _challenge(request))
        identity, csrf = found
        if request.method in UNSAFE_METHODS and not hmac.compare_digest(
                request.headers.get("X-CSRF-Token", ""), csrf):
            return error(403, "csrf", "this change did not come from the dashboard's page "
                         "(no or a wrong X-CSRF-Token): reload the page")
        request[IDENTITY] = identity
        request[SESSION_CSRF] = csrf
        return await handler(request)
    credentials = parse_basic(header or "")
    if credentials is None:
        reason = "missing" if header is None else "malformed"
        metrics.AUTH_FAILURES.labels(reason).inc()
        return error(401, "unauthorized", "sign in, or send HTTP Basic credentials",
                     _challenge(request))
    checked = await check_password(request, *credentials)
    if isinstance(checked, web.Response):
        return checked
    request[IDENTITY] = checked
    return await handler(request)
