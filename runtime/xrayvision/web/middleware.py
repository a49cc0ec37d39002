"""Middlewares, outermost first: metrics and security headers, JSON errors, rate limit,
authentication of ``/api/*``, ``/ws`` and, with ``[web] metrics_auth``, ``/metrics``.

Every error a client sees is JSON ``{"error": <short name>, "detail": <what to do>}``
with the matching status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from xrayvision import metrics
from xrayvision.db import repo
from xrayvision.db.engine import is_disk_full, is_transient
from xrayvision.web.auth import Authenticator, LoginGuard, parse_basic
from xrayvision.web.context import (
    AUTH,
    CLIENT_IP,
    IDENTITY,
    LIMITER,
    LOGIN_GUARD,
    MAX_BODY,
    SERVICES,
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


def _needs_auth(request: web.Request) -> bool:
    path = request.path
    if path.startswith("/api/") or path == "/ws":
        return True
    return path == "/metrics" and request.app[SETTINGS].web.metrics_auth


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _needs_auth(request):
        return await handler(request)
    auth: Authenticator = request.app[AUTH]
    ip = request[CLIENT_IP]
    credentials = parse_basic(request.headers.get("Authorization", ""))
    challenge = {"WWW-Authenticate": 'Basic realm="xrayvision", charset="UTF-8"'}
    if credentials is None:
        reason = "missing" if "Authorization" not in request.headers else "malformed"
        metrics.AUTH_FAILURES.labels(reason).inc()
        return error(401, "unauthorized", "HTTP Basic credentials are required", challenge)
    services = request.app[SERVICES]
    name = credentials[0][:128]
    identity, fresh = auth.cached(*credentials), False
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
            identity, fresh = await auth.verify(*credentials)
            ok = identity is not None
        finally:
            guard.end(ip, name, ok)
    if identity is None:
        metrics.AUTH_FAILURES.labels("wrong").inc()
        if services.db is not None:
            await services.db.write(repo.audit, "login.failed", username=name, remote=ip)
        return error(401, "unauthorized", "wrong username or password", challenge)
    if fresh and services.db is not None:
        await services.db.write(repo.audit, "login", username=identity.username, remote=ip)
    request[IDENTITY] = identity
    return await handler(request)
