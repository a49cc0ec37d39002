"""A reverse proxy that adds a fixed delay to every request (benchmarks: a FHIR server
"far away"). ``python latency_proxy.py PORT TARGET_ORIGIN DELAY_SECONDS``."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(target: str, delay: float) -> web.Application:
    async def forward(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "accept", "content-type")}
        async with request.app[SESSION].request(
            request.method, target + request.rel_url.raw_path_qs, headers=headers,
            data=await request.read() if request.can_read_body else None,
        ) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body,
                                content_type=upstream.content_type)

    async def session_ctx(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=True)
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    port, target, delay = int(sys.argv[1]), sys.argv[2].rstrip("/"), float(sys.argv[3])
    web.run_app(make_app(target, delay), host="127.0.0.1", port=port, print=None,
                access_log=None)
