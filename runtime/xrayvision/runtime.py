"""What the roles of one process share, built once by ``serve`` (:func:`open_runtime`).

One of each per process: the database, the image store, the event bus, the singleton
locks, one HTTP session, one model client with the process's one health loop
(:func:`model_health`, which also follows the known-answer probes' verdicts), the text
services on that client (check, translate, analyse: the fhir and web roles) and, in a
relay process, the report pipeline built on them, the prober (``[probes]``) and the
shadow reader (``[ai] shadow_url``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from xrayvision.ai.client import Endpoint, EndpointHealth, ModelClient
from xrayvision.ai.parse import Check
from xrayvision.ai.pipeline import Enrich, Notify, Pipeline, no_enrichment
from xrayvision.ai.probes import Prober, ProbeRunner, follow_probes, load_probe_set
from xrayvision.ai.prompts import Prompts, load_prompts
from xrayvision.ai.shadow import ShadowReader
from xrayvision.ai.text import TextServices
from xrayvision.config import Settings
from xrayvision.db.engine import Database
from xrayvision.db.repo import ReportContext
from xrayvision.events import ENDPOINT_HEALTH, Bus
from xrayvision.fhir.client import FhirClient, FhirServer
from xrayvision.fhir.enrich import PatientEnricher
from xrayvision.images import ImageStore, fit_png
from xrayvision.locks import SingletonLocks
from xrayvision.notify import Notice, Notifier
from xrayvision.results.sender import ResultSender
from xrayvision.tasks import run_together

log = logging.getLogger(__name__)

@dataclass
class Runtime:
    """One process's shared resources; the roles take it (``roles.<name>.run(rt)``)."""

    settings: Settings
    db: Database
    bus: Bus
    locks: SingletonLocks
    store: ImageStore
    worker_id: str
    app: web.Application  # readiness, and the services the web role fills in
    http: aiohttp.ClientSession
    model: ModelClient | None = None  # None: no role here calls the model
    text: TextServices | None = None  # on ``model``
    pipeline: Pipeline | None = None  # on ``text``, in a relay process
    prober: Prober | None = None  # in a relay process, when [probes] interval > 0
    shadow: ShadowReader | None = None  # in a relay process, when a shadow model is set


def endpoints(settings: Settings) -> list[Endpoint]:
    """The model endpoints in failover order: primary, then secondary when set."""
    ai = settings.ai
    found = [Endpoint("primary", ai.primary_url, ai.model, ai.api_key, ai.timeout)]
    if ai.secondary_url:
        found.append(Endpoint("secondary", ai.secondary_url, ai.secondary_model or ai.model,
                              ai.api_key, ai.timeout))
    return found


def shadow_endpoint(settings: Settings) -> Endpoint | None:
    """The shadow model's endpoint (never in the failover order); None when unset."""
    ai = settings.ai
    if not ai.shadow_url:
        return None
    return Endpoint("shadow", ai.shadow_url, ai.shadow_model or ai.model, ai.api_key,
                    ai.timeout)


def probe_runner(settings: Settings, client: ModelClient, prompts: Prompts) -> ProbeRunner:
    """The known-answer probe set's runner on ``client`` (raises ProbeSetError)."""
    return ProbeRunner(client, prompts, load_probe_set(settings.probes.dir),
                       budget=settings.probes.latency_budget,
                       max_tokens=settings.ai.max_tokens,
                       scale=lambda png: fit_png(png, settings.images.max_side))


def notice_for(settings: Settings, exam: ReportContext, check: Check) -> Notice:
    """The notification of a severe finding (the patient's name only when allowed)."""
    name = exam.patient_name if settings.notify.include_patient_name else ""
    return Notice(uid=exam.uid, region=exam.region, severity=check.severity,
                  summary=check.summary, link=f"{settings.notify.dashboard_url}/#/exam/{exam.uid}",
                  patient_name=name)


def _notifier(settings: Settings, http: aiohttp.ClientSession) -> Notify | None:
    if not settings.notify.ntfy_url:
        return None
    sender = Notifier(http, settings.notify.ntfy_url, settings.notify.ntfy_topic)

    async def notify(exam: ReportContext, check: Check) -> None:
        sender.send(notice_for(settings, exam, check))

    return notify


def fhir_client(settings: Settings, http: aiohttp.ClientSession) -> FhirClient:
    return FhirClient(FhirServer.from_settings(settings.fhir), http)


def patient_enrichment(settings: Settings, db: Database,
                       http: aiohttp.ClientSession) -> Enrich:
    """The patient lookup (FHIR): the relay's before a read, the fhir role's for what
    the relay skipped; none (:func:`no_enrichment`) when FHIR is off or ``[fhir] enrich``
    is false."""
    if not settings.fhir.url or not settings.fhir.enrich:
        return no_enrichment
    return PatientEnricher(fhir_client(settings, http), db,
                           identifier_system=settings.fhir.identifier_system,
                           ttl=settings.fhir.cache_seconds,
                           budget=min(10.0, settings.fhir.timeout))


def result_sender(rt: Runtime) -> ResultSender | None:
    """The results outbox's sender on the process's HTTP session; None when no
    ``[results]`` destination is set."""
    settings = rt.settings
    if not settings.results.enabled:
        return None
    fhir = None
    if settings.results.fhir_url:
        fhir = FhirClient(ResultSender.fhir_server(settings), rt.http)
    return ResultSender(settings, rt.db, rt.worker_id, fhir=fhir, store=rt.store)


def needs_model(settings: Settings) -> bool:
    """The relay and fhir roles always call the model; the web role when a URL is set."""
    roles = set(settings.server.roles)
    return bool(roles & {"relay", "fhir"}) or ("web" in roles and bool(settings.ai.primary_url))


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, db: Database, bus: Bus, locks: SingletonLocks,
                       store: ImageStore, worker_id: str,
                       app: web.Application) -> AsyncIterator[Runtime]:
    """The runtime, with its HTTP session open for as long as the context lasts."""
    async with aiohttp.ClientSession() as http:
        rt = Runtime(settings, db, bus, locks, store, worker_id, app, http)
        if needs_model(settings):
            relay_here = "relay" in settings.server.roles

            async def on_health(health: dict[str, EndpointHealth]) -> None:
                # The relays' view is the dashboard's: the model they read exams with.
                if relay_here:
                    await bus.publish(ENDPOINT_HEALTH,
                                      **{name: h.as_dict() for name, h in health.items()})

            rt.model = ModelClient(endpoints(settings), http,
                                   max_attempts=settings.ai.max_attempts, on_health=on_health)
            rt.text = TextServices(rt.model, load_prompts(settings.ai.prompts_dir))
            if relay_here:
                shadow = shadow_endpoint(settings)
                if shadow is not None:
                    rt.shadow = ShadowReader(rt.text.prompts, db, shadow,
                                             per_minute=settings.ai.shadow_rate,
                                             max_tokens=settings.ai.max_tokens)
                rt.pipeline = Pipeline(
                    rt.text, db, store, bus,
                    severity_threshold=settings.processing.severity_threshold,
                    notify=_notifier(settings, http), max_tokens=settings.ai.max_tokens,
                    max_images=settings.ai.max_images, results=settings.results.enabled,
                    enrich=patient_enrichment(settings, db, http),
                    max_side=settings.images.max_side,
                    shadow=rt.shadow.offer if rt.shadow is not None else None)
                probes = settings.probes
                if probes.interval > 0:
                    rt.prober = Prober(probe_runner(settings, rt.model, rt.text.prompts), db,
                                       bus, interval=probes.interval,
                                       retry_interval=probes.retry_interval, shadow=shadow)
        yield rt


async def model_health(rt: Runtime) -> None:
    """The process's one health loop of its model endpoints, and its routing kept in
    step with the known-answer probes' verdicts (until cancelled)."""
    if rt.model is not None:
        await run_together(rt.model.health_loop(rt.settings.ai.health_interval),
                           follow_probes(rt.model, rt.db, rt.bus))
