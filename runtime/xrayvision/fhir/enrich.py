"""Patient enrichment before the model call.

The AI pipeline calls :class:`PatientEnricher` with each exam's context; it looks the
patient up in the hospital system by patient id (CNP), else by name and birth date, and
writes birth date, sex and (for an exam without one) the patient id to the database, so
the model's prompt carries the right age and sex. When the patient is found and the exam
has an accession number, the order (ServiceRequest) carrying it is read too: a higher
priority there (urgent, asap, stat) raises the exam's, for the worklist's urgent-first
order. Orders are not cached (they change); patients are.

FHIR never holds up AI processing: each lookup has a time budget, a failure only logs a
warning, and after one the enricher stops asking for ``pause`` seconds. Answers (also
"no such patient") are cached for ``ttl`` seconds in a bounded LRU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cachetools import TTLCache

from xrayvision import metrics
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.repo import ReportContext
from xrayvision.fhir.client import FhirClient, FhirError
from xrayvision.fhir.resources import PatientDetails, order_priority, patient_of

log = logging.getLogger(__name__)

MISSING = object()  # not cached (a cached miss is None)


def lookup_key(exam: ReportContext) -> tuple[str, ...] | None:
    """What the patient is looked up by: ("id", cnp) or ("name", family, birth date);
    None when the exam has neither."""
    if exam.cnp:
        return ("id", exam.cnp)
    family = exam.patient_name.split("^", 1)[0].strip()
    if family and exam.birth_date is not None:
        return ("name", family, exam.birth_date.isoformat())
    return None


class PatientEnricher:
    def __init__(self, client: FhirClient, db: Database, *, identifier_system: str = "",
                 ttl: float = 3600.0, size: int = 4096, budget: float = 10.0,
                 pause: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.db = db
        self.identifier_system = identifier_system
        self.cache: TTLCache = TTLCache(maxsize=size, ttl=ttl, timer=clock)
        self.budget = budget
        self.pause = pause
        self.clock = clock
        self._paused_until = 0.0

    async def lookup(self, key: tuple[str, ...]) -> PatientDetails | None:
        """The one patient the key names (None for none or several); raises FhirError or
        TimeoutError."""
        async with asyncio.timeout(self.budget):
            if key[0] == "id":
                found = await self.client.find_patients(identifier=key[1],
                                                        system=self.identifier_system)
            else:
                found = await self.client.find_patients(name=key[1], birth_date=key[2])
        if len(found) != 1:
            return None
        return patient_of(found[0], self.identifier_system)

    async def __call__(self, exam: ReportContext) -> None:
        key = lookup_key(exam)
        if key is None:
            metrics.FHIR_ENRICHMENT.labels("skipped").inc()
            return
        details = self.cache.get(key, MISSING)
        if details is not MISSING:
            metrics.FHIR_ENRICHMENT.labels("cached").inc()
        else:
            if self.clock() < self._paused_until:
                metrics.FHIR_ENRICHMENT.labels("skipped").inc()
                return
            try:
                details = await self.lookup(key)
            except (FhirError, TimeoutError) as exc:
                self._paused_until = self.clock() + self.pause
                metrics.FHIR_ENRICHMENT.labels("error").inc()
                log.warning("patient enrichment failed; processing goes on without it",
                            extra={"uid": exam.uid, "error": str(exc) or type(exc).__name__,
                                   "pause_seconds": self.pause})
                return
            self.cache[key] = details
            metrics.FHIR_ENRICHMENT.labels("hit" if details is not None else "miss").inc()
        if details is None:
            return
        assert isinstance(details, PatientDetails)
        await self._order_priority(exam, details)
        info = repo.PatientInfo(cnp=details.cnp, name=details.name,
                                birth_date=details.birth_date, sex=details.sex)
        if (info.birth_date == exam.birth_date and (not info.sex or info.sex == exam.sex)
                and exam.cnp):
            return  # nothing new: spare the write
        await self.db.write(repo.enrich_patient, exam.uid, info)

    async def _order_priority(self, exam: ReportContext, details: PatientDetails) -> None:
        """Raises the exam's priority to its order's. One request per read (orders change;
        not cached), within the budget; a failure only logs and pauses lookups, as for
        patients, so that a slow HIS does not delay every read."""
        if not exam.accession or not details.fhir_id or self.clock() < self._paused_until:
            return
        try:
            async with asyncio.timeout(self.budget):
                requests = await self.client.service_requests(details.fhir_id)
        except (FhirError, TimeoutError) as exc:
            self._paused_until = self.clock() + self.pause
            log.warning("the exam's order could not be read; its priority stays",
                        extra={"uid": exam.uid, "error": str(exc) or type(exc).__name__,
                               "pause_seconds": self.pause})
            return
        priority = order_priority(requests, exam.accession)
        if priority is not None and priority > exam.priority and await self.db.write(
                repo.raise_priority, exam.uid, priority):
            log.info("priority raised from the order", extra={"uid": exam.uid,
                                                              "priority": priority})
