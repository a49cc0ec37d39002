"""The ``relay`` role: model client (health loop), pipeline, relay loop, queue metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.parse import Check
from xrayvision.ai.pipeline import Enrich, Pipeline, no_enrichment
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.relay import Relay, export_queue_metrics
from xrayvision.config import Settings
from xrayvision.db.engine import Database
from xrayvision.db.repo import ReportContext
from xrayvision.events import ENDPOINT_HEALTH, Bus
from xrayvision.images import ImageStore
from xrayvision.locks import SingletonLocks
from xrayvision.notify import Notice, Notifier
from xrayvision.tasks import run_together

log = logging.getLogger(__name__)


def endpoints(settings: Settings) -> list[Endpoint]:
    ai = settings.ai
    found = [Endpoint("primary", ai.primary_url, ai.model, ai.api_key, ai.timeout)]
    if ai.secondary_url:
        found.append(Endpoint("secondary", ai.secondary_url, ai.secondary_model or ai.model,
                              ai.api_key, ai.timeout))
    return found


def notice_for(settings: Settings, exam: ReportContext, check: Check) -> Notice:
    name = exam.patient_name if settings.notify.include_patient_name else ""
    return Notice(uid=exam.uid, region=exam.region, severity=check.severity,
                  summary=check.summary, link=f"{settings.notify.dashboard_url}/#/exam/{exam.uid}",
                  patient_name=name)


async def run_relay(settings: Settings, db: Database, store: ImageStore, bus: Bus,
                    locks: SingletonLocks, worker: str,
                    enrichment: Callable[[aiohttp.ClientSession], Enrich] | None = None
                    ) -> None:
    """``enrichment`` builds the pipeline's enrichment hook on the relay's HTTP session
    (the FHIR patient lookup; composed by serve)."""
    prompts = load_prompts(settings.ai.prompts_dir)
    async with aiohttp.ClientSession() as session:
        async def on_health(health: dict[str, bool]) -> None:
            await bus.publish(ENDPOINT_HEALTH, **health)

        client = ModelClient(endpoints(settings), session, max_attempts=settings.ai.max_attempts,
                             on_health=on_health)
        notifier = None
        if settings.notify.ntfy_url:
            sender = Notifier(session, settings.notify.ntfy_url, settings.notify.ntfy_topic)

            async def notifier(exam: ReportContext, check: Check) -> None:
                sender.send(notice_for(settings, exam, check))

        pipeline = Pipeline(client, db, store, bus, prompts,
                            severity_threshold=settings.processing.severity_threshold,
                            notify=notifier, max_tokens=settings.ai.max_tokens,
                            enrich=enrichment(session) if enrichment else no_enrichment)
        relay = Relay(pipeline, db, bus, worker, concurrency=settings.relay.concurrency,
                      lease_seconds=settings.processing.lease_seconds,
                      sweep_interval=settings.relay.sweep_interval,
                      max_attempts=settings.ai.max_attempts,
                      retry_delay=settings.processing.retry_delay)
        log.info("relay started", extra={"endpoints": ",".join(e.name for e in client.endpoints),
                                         "concurrency": settings.relay.concurrency})
        await run_together(
            client.health_loop(settings.ai.health_interval),
            relay.run(),
            locks.run("queue-metrics", lambda: export_queue_metrics(db)),
        )
