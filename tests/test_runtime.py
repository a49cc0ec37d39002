"""The runtime a process's roles share: one model client, one set of text services, the
report pipeline only where the relay runs, endpoint health published only by relays."""

import asyncio

import pytest

from support.runtimes import MODEL, runtime_for, settings_for
from xrayvision.ai.client import EndpointHealth
from xrayvision.events import ENDPOINT_HEALTH
from xrayvision.runtime import endpoints


@pytest.mark.parametrize(("roles", "url", "model", "pipeline"), [
    ("ingest", MODEL, False, False),
    ("web", "", False, False),  # no model configured: /api/check answers 503
    ("web", MODEL, True, False),
    ("fhir", MODEL, True, False),
    ("relay", MODEL, True, True),
    ("ingest,relay,fhir,web", MODEL, True, True),
])
async def test_what_a_process_builds_follows_its_roles(tmp_path, sqlite_db, roles, url, model,
                                                       pipeline):
    settings = settings_for(tmp_path, roles, XRAYVISION_AI_PRIMARY_URL=url)
    async with runtime_for(settings, sqlite_db, tmp_path) as rt:
        assert (rt.model is not None) == model
        assert (rt.text is not None) == model
        assert (rt.pipeline is not None) == pipeline
        if rt.text is not None:
            assert rt.text.client is rt.model  # one client per process
        if rt.pipeline is not None:
            assert rt.pipeline.text is rt.text


@pytest.mark.parametrize(("roles", "published"), [("relay", True), ("fhir,web", False)])
async def test_only_relay_processes_publish_endpoint_health(tmp_path, sqlite_db, roles,
                                                            published):
    settings = settings_for(tmp_path, roles, XRAYVISION_AI_PRIMARY_URL=MODEL)
    async with runtime_for(settings, sqlite_db, tmp_path) as rt:
        with rt.bus.subscribe() as events:
            assert rt.model is not None and rt.model.on_health is not None
            await rt.model.on_health({"primary": EndpointHealth(False, "HTTP 503", "t")})
            try:
                event = await asyncio.wait_for(events.get(), 0.5)
            except TimeoutError:
                event = None
    assert (event is not None and event.type == ENDPOINT_HEALTH) == published
    if published:
        assert event.data == {"primary": {"healthy": False, "error": "HTTP 503",
                                          "error_at": "t", "probe": "", "probe_reason": "",
                                          "probe_at": ""}}


def test_endpoints_in_failover_order(tmp_path):
    one = settings_for(tmp_path, "relay", XRAYVISION_AI_PRIMARY_URL=MODEL,
                       XRAYVISION_AI_MODEL="medgemma")
    assert [(e.name, e.model) for e in endpoints(one)] == [("primary", "medgemma")]
    two = settings_for(tmp_path, "relay", XRAYVISION_AI_PRIMARY_URL=MODEL,
                       XRAYVISION_AI_MODEL="medgemma",
                       XRAYVISION_AI_SECONDARY_URL="http://127.0.0.1:10")
    assert [(e.name, e.model) for e in endpoints(two)] == [
        ("primary", "medgemma"), ("secondary", "medgemma")]  # the primary's model by default


async def test_a_model_url_ending_in_v1_reaches_the_same_server(tmp_path, sqlite_db):
    """``[ai] primary_url = http://host:8000/v1``, as OpenAI clients are configured: the
    health check and the chat completion reach the stub, not ``/v1/v1/...``."""
    from support.model_stub import Stub

    stub = await Stub().start()
    try:
        settings = settings_for(tmp_path, "relay", XRAYVISION_AI_PRIMARY_URL=stub.url + "/v1/")
        async with runtime_for(settings, sqlite_db, tmp_path) as rt:
            assert rt.model is not None
            await rt.model.check_all()
            assert rt.model.health()["primary"].error == ""
            result = await rt.model.chat([{"role": "user", "content": "hi"}], call="report")
    finally:
        await stub.stop()
    assert result.endpoint == "primary" and len(stub.state.requests) == 1
