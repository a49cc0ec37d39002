"""The model client against stub servers: routing, failover, failback, errors."""

import asyncio
import logging

import aiohttp
import pytest

from xrayvision import metrics
from xrayvision.ai.client import Endpoint, ModelClient, ModelRejected, ModelUnavailable

MSG = [{"role": "user", "content": "hello"}]


def client_for(session, primary, secondary, **kw):
    eps = [Endpoint("primary", primary.url, "m1", "key-1", timeout=2),
           Endpoint("secondary", secondary.url, "m2", timeout=2)]
    return ModelClient(eps, session, backoff=0.01, **kw)


async def test_primary_serves_and_request_shape(stubs):
    primary, secondary = stubs
    async with aiohttp.ClientSession() as session:
        client = client_for(session, primary, secondary)
        result = await client.chat(MSG, call="report", max_tokens=50)
    assert result.endpoint == "primary" and result.model == "m1" and "FINDINGS" in result.text
    body = primary.state.requests[0]
    assert body["model"] == "m1" and body["messages"] == MSG and body["max_tokens"] == 50
    assert not secondary.state.requests
    assert result.usage["completion_tokens"] == 60


@pytest.mark.parametrize("mode", ["500", "drop", "hang", "malformed"])
async def test_failure_moves_to_the_secondary_at_once(stubs, mode):
    primary, secondary = stubs
    primary.state.mode = mode
    before = metrics.MODEL_FAILOVERS.labels("primary")._value.get()
    async with aiohttp.ClientSession() as session:
        client = client_for(session, primary, secondary)
        result = await client.chat(MSG, call="report")
        assert result.endpoint == "secondary"
        assert client.healthy == {"primary": False, "secondary": True}
        assert client.active().name == "secondary"
        # While the primary is marked down, requests go straight to the secondary.
        await client.chat(MSG, call="check")
        assert len(primary.state.requests) == 1
    assert metrics.MODEL_FAILOVERS.labels("primary")._value.get() == before + 1


async def test_failback_when_the_primary_recovers(stubs):
    primary, secondary = stubs
    async with aiohttp.ClientSession() as session:
        client = client_for(session, primary, secondary)
        primary.state.healthy = False
        await client.check_all()
        assert client.active().name == "secondary"
        assert (await client.chat(MSG, call="report")).endpoint == "secondary"
        primary.state.healthy = True
        await client.check_all()
        assert client.active().name == "primary"
        assert (await client.chat(MSG, call="report")).endpoint == "primary"


async def test_health_falls_back_to_v1_models():
    from aiohttp import web

    from support.httppeer import serving

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        client = ModelClient([Endpoint("primary", url, "m")], session)
        assert await client.probe(client.endpoints[0]) == ""


async def test_a_server_serving_another_model_is_down_with_both_names(stubs, caplog):
    """The served model name is checked against /v1/models (a config copied from
    another site, a model swapped under a new name): the endpoint is down, and the
    reason names what the server serves and what we asked for."""
    primary, secondary = stubs
    primary.state.served = ("google/medgemma-27b-it",)
    async with aiohttp.ClientSession() as session:
        client = ModelClient([Endpoint("primary", primary.url, "m1", timeout=2),
                              Endpoint("secondary", secondary.url, "m2", timeout=2)],
                             session, backoff=0.01)
        with caplog.at_level(logging.WARNING):
            await client.check_all()
        health = client.health()
        assert not health["primary"].healthy and health["secondary"].healthy
        assert "serves 'google/medgemma-27b-it', not 'm1'" in health["primary"].error
        assert client.active().name == "secondary"
        assert any("serves 'google/medgemma-27b-it'" in getattr(r, "reason", "")
                   for r in caplog.records)
        primary.state.served = ("m1",)  # the right model is deployed
        await client.check_all()
        assert client.active().name == "primary"


async def test_every_failed_health_check_says_url_and_status(stubs, caplog):
    primary, secondary = stubs
    primary.state.healthy = False  # /health answers 503
    async with aiohttp.ClientSession() as session:
        seen = []

        async def on_health(health):
            seen.append(health)

        client = client_for(session, primary, secondary, on_health=on_health)
        with caplog.at_level("WARNING", logger="xrayvision.ai.client"):
            await client.check_all()
            await client.check_all()
        failures = [r for r in caplog.records if r.getMessage() == "model health check failed"]
        assert len(failures) == 2  # every failed check, not only the transition
        assert all(r.reason.startswith(f"GET {primary.url}/health: HTTP 503")
                   for r in failures)
        health = client.health()
        assert not health["primary"].healthy and health["primary"].error == failures[0].reason
        assert health["primary"].error_at and health["secondary"].healthy
        assert health["secondary"].error == ""
        # One publication for the transition; the same reason again is no news.
        assert len(seen) == 1 and seen[0]["primary"].error.endswith("HTTP 503")
        primary.state.healthy = True
        await client.check_all()
        # Up again: the last error is still there to explain the flap.
        assert client.health()["primary"].healthy
        assert client.health()["primary"].error == failures[0].reason


async def test_a_refused_connection_names_the_url_and_the_error(unused_tcp_port, caplog):
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with aiohttp.ClientSession() as session:
        client = ModelClient([Endpoint("primary", url, "m", timeout=2)], session)
        with caplog.at_level("WARNING", logger="xrayvision.ai.client"):
            await client.check_all()
        reason = client.health()["primary"].error
        assert reason.startswith(f"GET {url}/health: ClientConnectorError")
        assert any(getattr(r, "reason", "") == reason for r in caplog.records)
        with pytest.raises(ModelUnavailable, match=f"POST {url}/v1/chat/completions"):
            await client.chat(MSG, call="report")


async def test_both_down_raises_unavailable_and_recovered_wakes(stubs):
    primary, secondary = stubs
    primary.state.mode = secondary.state.mode = "500"
    primary.state.healthy = False  # its /health says so too
    async with aiohttp.ClientSession() as session:
        client = client_for(session, primary, secondary, max_attempts=2)
        with pytest.raises(ModelUnavailable, match="after 2 rounds"):
            await client.chat(MSG, call="report")
        assert client.active() is None and not client.recovered.is_set()
        assert len(primary.state.requests) == 2 and len(secondary.state.requests) == 2
        secondary.state.mode = "ok"
        waiter = asyncio.create_task(client.recovered.wait())
        await client.check_all()
        await asyncio.wait_for(waiter, 2)
        assert client.active().name == "secondary"


async def test_4xx_is_not_retried(stubs):
    primary, secondary = stubs
    async with aiohttp.ClientSession() as session:
        client = ModelClient([Endpoint("primary", primary.url + "/nope", "m")], session)
        with pytest.raises(ModelRejected, match="HTTP 404"):
            await client.chat(MSG, call="report")


def test_encode_body_splices_data_uris_and_stays_valid_json():
    import base64
    import json
    import os

    from xrayvision.ai.client import encode_body

    uri = "data:image/png;base64," + base64.b64encode(os.urandom(30000)).decode()
    body = {"model": "m", "messages": [
        {"role": "system", "content": "Rapoarte în română: ă â î ș ț \"quoted\""},
        {"role": "user", "content": [{"type": "text", "text": "__xrayvision_blob_0__"},
                                     {"type": "image_url", "image_url": {"url": uri}}]}]}
    assert json.loads(encode_body(body)) == body
