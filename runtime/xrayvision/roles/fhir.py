"""The ``fhir`` role: polls the HIS for radiologists' reports (one process, under a
singleton lock), checks and translates them with the model."""

from __future__ import annotations

import asyncio
import logging

from xrayvision.ai.pipeline import no_enrichment
from xrayvision.fhir.poller import Poller
from xrayvision.runtime import Runtime, fhir_client, patient_enrichment

log = logging.getLogger(__name__)


async def run(rt: Runtime) -> None:
    settings = rt.settings
    if not settings.fhir.url:
        log.warning("the fhir role runs but [fhir] url is empty: no reports are fetched")
        await asyncio.Event().wait()
    assert rt.text is not None  # built for this role
    # Lookups the relay skipped (HIS down when the exam was read) are made again here.
    enrich = patient_enrichment(settings, rt.db, rt.http)
    poller = Poller(fhir_client(settings, rt.http), rt.db, rt.text, rt.bus, settings,
                    enrich=None if enrich is no_enrichment else enrich)
    log.info("FHIR poller starting", extra={"interval": settings.fhir.poll_interval})
    await rt.locks.run("fhir-poller", poller.run)
