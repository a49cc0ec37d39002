"""The shadow model: a model under evaluation that gets a copy of live reads.

The pipeline offers each stored read's request (the messages the live model got, images
included) to :meth:`ShadowReader.offer`, which never waits: it takes the copy when the
rate allows (``[ai] shadow_rate`` reads a minute, a token bucket) and a slot is free,
else skips it (counted). The shadow's own workers send the read and CHK to the shadow
endpoint only (no failover, no effect on the live endpoints' health) and store the
answer in ``shadow_reads``, apart from the AI reads: it is never shown, notified or sent
as one. Agreement per model (:func:`xrayvision.db.repo.shadow_agreement`) says how it
compares with the radiologists and with the live model on the site's own studies;
promoting it is a settings (spec) change.
"""

from __future__ import annotations

import asyncio
import logging
import time

from xrayvision import metrics
from xrayvision.ai.client import Endpoint, ModelClient, ModelError
from xrayvision.ai.parse import parse_check, parse_report
from xrayvision.ai.prompts import Prompts
from xrayvision.ai.text import check_messages
from xrayvision.db import repo
from xrayvision.db.engine import Database

log = logging.getLogger(__name__)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved (pure but for the clock)."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ShadowReader:
    def __init__(self, client: ModelClient, prompts: Prompts, db: Database,
                 endpoint: Endpoint, *, per_minute: float, workers: int = 2,
                 max_tokens: int = 1024) -> None:
        self.client = client
        self.prompts = prompts
        self.db = db
        self.endpoint = endpoint
        self.workers = workers
        self.max_tokens = max_tokens
        # Ten seconds' worth saved, at least one read: a burst of studies is sampled.
        self.bucket = TokenBucket(per_minute / 60, max(1.0, per_minute / 6))
        # A copy holds its images: only as many wait as the workers can take next.
        self.waiting: asyncio.Queue[tuple[str, list[dict]]] = asyncio.Queue(maxsize=workers)

    def offer(self, key: str, messages: list[dict]) -> bool:
        """Takes a copy of the read of ``key`` when the rate and a free slot allow;
        never waits. Returns whether it was taken."""
        if self.waiting.full():
            metrics.SHADOW_READS.labels("skipped_busy").inc()
            return False
        if not self.bucket.take():
            metrics.SHADOW_READS.labels("skipped_rate").inc()
            return False
        self.waiting.put_nowait((key, messages))
        return True

    async def read(self, key: str, messages: list[dict]) -> None:
        """The shadow's read of ``key`` and its CHK, stored apart; a failure is counted
        and logged, nothing else."""
        try:
            result = await self.client.chat_on(self.endpoint, messages, call="shadow",
                                               max_tokens=self.max_tokens)
            report = parse_report(result.text)
            chk = await self.client.chat_on(self.endpoint,
                                            check_messages(self.prompts, report.text),
                                            call="shadow", max_tokens=256, temperature=0.0)
            check = parse_check(chk.text)
            await self.db.write(
                repo.save_shadow_read, key, text=report.text, positive=check.positive,
                severity=check.severity, confidence=check.confidence, summary=check.summary,
                model=self.endpoint.model, endpoint=self.endpoint.name,
                latency=round(result.seconds, 3), prompt_version=self.prompts.version)
        except (ModelError, OSError) as exc:
            metrics.SHADOW_READS.labels("failed").inc()
            log.warning("shadow read failed", extra={"uid": key, "reason": str(exc)[:300]})
            return
        except Exception:  # noqa: BLE001 - a database outage: the shadow copy is dropped
            metrics.SHADOW_READS.labels("failed").inc()
            log.warning("shadow read not stored", extra={"uid": key}, exc_info=True)
            return
        metrics.SHADOW_READS.labels("stored").inc()

    async def _work(self) -> None:
        while True:
            key, messages = await self.waiting.get()
            await self.read(key, messages)

    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(self.workers)))
