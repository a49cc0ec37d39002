"""The fhir role without a FHIR server: says so and waits (a restart would change nothing)."""

import asyncio
import logging

import pytest

from support.runtimes import MODEL, runtime_for, settings_for
from xrayvision.roles import fhir


async def test_without_a_url_it_warns_and_waits(tmp_path, sqlite_db, caplog):
    settings = settings_for(tmp_path, "fhir", XRAYVISION_AI_PRIMARY_URL=MODEL)
    async with runtime_for(settings, sqlite_db, tmp_path) as rt:
        with (caplog.at_level(logging.WARNING, logger="xrayvision.roles.fhir"),
              pytest.raises(TimeoutError)):
            await asyncio.wait_for(fhir.run(rt), 0.5)
    assert "[fhir] url is empty" in caplog.text
