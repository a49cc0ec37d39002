"""ntfy notifications for severe findings: retried, in the background, never blocking or
failing the pipeline. No patient name unless ``[notify] include_patient_name``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from xrayvision import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    uid: str
    region: str
    severity: int
    summary: str
    link: str
    patient_name: str = ""

    def title(self) -> str:
        return f"X-ray severity {self.severity}: {self.region or 'unknown region'}"

    def body(self) -> str:
        lines = [self.summary or "(no summary)", f"Exam: {self.uid}"]
        if self.patient_name:
            lines.insert(0, f"Patient: {self.patient_name}")
        return "\n".join(lines)


class Notifier:
    def __init__(self, session: aiohttp.ClientSession, url: str, topic: str, *,
                 attempts: int = 4, backoff: float = 2.0) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.topic = topic
        self.attempts = attempts
        self.backoff = backoff
        self._tasks: set[asyncio.Task] = set()

    def send(self, notice: Notice) -> None:
        """Queues the notice and returns at once."""
        task = asyncio.create_task(self._deliver(notice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, notice: Notice) -> bool:
        headers = {"Title": notice.title(), "Priority": "urgent" if notice.severity >= 8
                   else "high", "Tags": "warning", "Click": notice.link}
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                async with self.session.post(f"{self.url}/{self.topic}",
                                             data=notice.body().encode(), headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status < 300:
                        metrics.NOTIFICATIONS.labels("sent").inc()
                        return True
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        metrics.NOTIFICATIONS.labels("failed").inc()
        log.warning("notification not delivered", extra={"uid": notice.uid, "reason": reason})
        return False

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
