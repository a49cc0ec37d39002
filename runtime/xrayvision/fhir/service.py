"""The ``fhir`` role (the poller, under a singleton lock) and the relay's enrichment hook."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from xrayvision.ai.client import ModelClient
from xrayvision.ai.pipeline import Enrich, Pipeline
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.service import endpoints
from xrayvision.config import Settings
from xrayvision.db.engine import Database
from xrayvision.events import Bus
from xrayvision.fhir.client import FhirClient, FhirServer
from xrayvision.fhir.enrich import PatientEnricher
from xrayvision.fhir.poller import Poller
from xrayvision.images import ImageStore
from xrayvision.locks import SingletonLocks
from xrayvision.tasks import run_together

log = logging.getLogger(__name__)


def make_client(settings: Settings, session: aiohttp.ClientSession) -> FhirClient:
    return FhirClient(FhirServer.from_settings(settings.fhir), session)


def enrichment(settings: Settings, db: Database):
    """The relay's enrichment hook factory (session -> hook); None when FHIR is off or
    ``[fhir] enrich`` is false."""
    if not settings.fhir.url or not settings.fhir.enrich:
        return None

    def build(session: aiohttp.ClientSession) -> Enrich:
        return PatientEnricher(make_client(settings, session), db,
                               identifier_system=settings.fhir.identifier_system,
                               ttl=settings.fhir.cache_seconds,
                               budget=min(10.0, settings.fhir.timeout))

    return build


async def run_fhir(settings: Settings, db: Database, store: ImageStore, bus: Bus,
                   locks: SingletonLocks) -> None:
    if not settings.fhir.url:
        log.warning("the fhir role runs but [fhir] url is empty: no reports are fetched")
        await asyncio.Event().wait()
    prompts = load_prompts(settings.ai.prompts_dir)
    async with aiohttp.ClientSession() as session:
        model = ModelClient(endpoints(settings), session, max_attempts=settings.ai.max_attempts)
        pipeline = Pipeline(model, db, store, bus, prompts,
                            severity_threshold=settings.processing.severity_threshold,
                            max_tokens=settings.ai.max_tokens)
        poller = Poller(make_client(settings, session), db, pipeline, bus, settings)
        log.info("FHIR poller starting", extra={"interval": settings.fhir.poll_interval})
        await run_together(model.health_loop(settings.ai.health_interval),
                           locks.run("fhir-poller", poller.run))
