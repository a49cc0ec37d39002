"""The ``relay`` role: reads queued exams with the model (the lease queue, failover,
notifications of severe findings), exports the queue's metrics (one process), and sends
the results outbox (AI reads as DICOM SR to the PACS, FHIR to the HIS) when set, the
known-answer probes of the model endpoints (one process) and the shadow model's reads."""

from __future__ import annotations

import logging

from xrayvision.ai.relay import Relay, export_queue_metrics
from xrayvision.db import repo
from xrayvision.runtime import Runtime, result_sender
from xrayvision.tasks import run_together

log = logging.getLogger(__name__)


async def run(rt: Runtime) -> None:
    settings = rt.settings
    assert rt.pipeline is not None and rt.model is not None  # built for this role
    relay = Relay(rt.pipeline, rt.db, rt.bus, rt.worker_id,
                  concurrency=settings.relay.concurrency,
                  lease_seconds=settings.processing.lease_seconds,
                  sweep_interval=settings.relay.sweep_interval,
                  max_attempts=settings.ai.max_attempts,
                  retry_delay=settings.processing.retry_delay,
                  read_per_study=settings.ai.read_per == "study")
    # The severity threshold is a setting: the worklist's urgent-first order follows it.
    changed = await rt.db.write_patiently(repo.retriage,
                                          settings.processing.severity_threshold)
    if changed:
        log.info("worklist triage recomputed for the severity threshold",
                 extra={"exams": changed})
    log.info("relay started", extra={"endpoints": ",".join(e.name for e in rt.model.endpoints),
                                     "concurrency": settings.relay.concurrency})
    tasks = [relay.run(),
             rt.locks.run("queue-metrics", lambda: export_queue_metrics(rt.db))]
    if rt.prober is not None:  # one prober in the cluster; every process follows it
        tasks.append(rt.locks.run("model-probes", rt.prober.run))
    if rt.shadow is not None:
        tasks.append(rt.shadow.run())
    sender = result_sender(rt)
    if sender is not None:  # AI reads back to the PACS / HIS (docs/results.md)
        tasks.append(sender.run())
    await run_together(*tasks)
