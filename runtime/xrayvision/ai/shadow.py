"""The shadow model: a model under evaluation that gets a copy of live reads.

The pipeline offers each stored read's request (the messages the live model got, images
included) to :meth:`ShadowReader.offer`, which never waits: it takes the copy when the
rate allows (``[ai] shadow_rate`` reads a minute, a token bucket) and one of the shadow's
worker processes is free, else skips it (counted). The worker (:func:`read_in_worker`, a
spawned process, so that the shadow's requests cost the relay process nothing but the
hand-over) sends the read and then CHK to the shadow endpoint only (no failover, no
effect on the live endpoints' health) and returns the answer, which the relay stores in
``shadow_reads``, apart from the AI reads: it is never shown, notified or sent as one.
Agreement per model (:func:`xrayvision.db.repo.shadow_agreement`) says how it compares
with the radiologists and with the live model on the site's own studies; promoting it is
a settings (spec) change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from xrayvision import metrics
from xrayvision.ai.client import Endpoint, encode_body
from xrayvision.ai.parse import parse_check, parse_report
from xrayvision.ai.prompts import Prompts
from xrayvision.ai.text import check_messages
from xrayvision.db import repo
from xrayvision.db.engine import Database

log = logging.getLogger(__name__)

BATCH = 32  # answers stored in one transaction at most
FLUSH_SECONDS = 1.0  # and at least this often


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


class ShadowFailed(Exception):
    """The shadow endpoint gave no usable answer; the message says why."""


@dataclass(frozen=True)
class ShadowAnswer:
    text: str
    positive: int
    severity: int
    confidence: int
    summary: str
    seconds: float  # the read's request (not CHK)


def _chat(endpoint: Endpoint, messages: list[dict], max_tokens: int,
          temperature: float) -> str:
    """One chat completion from ``endpoint`` (blocking); raises ShadowFailed."""
    body = encode_body({"messages": messages, "max_tokens": max_tokens,
                        "temperature": temperature, "model": endpoint.model})
    request = urllib.request.Request(  # noqa: S310 - http(s): [ai] shadow_url is checked
        endpoint.url + "/v1/chat/completions", data=body, method="POST",
        headers={**endpoint.headers(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout) as resp:  # noqa: S310
            data = json.loads(resp.read())
        text = data["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as exc:
        raise ShadowFailed(f"{endpoint.url}: HTTP {exc.code}") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ShadowFailed(f"{endpoint.url}: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(text, str):
        raise ShadowFailed(f"{endpoint.url}: not a chat completion")
    return text


def read_in_worker(endpoint: Endpoint, prompts: Prompts, messages: list[dict],
                   max_tokens: int) -> ShadowAnswer:
    """The shadow's read and its CHK, as the pipeline makes them (blocking: a worker
    process runs it). Raises ShadowFailed."""
    started = time.perf_counter()
    report = parse_report(_chat(endpoint, messages, max_tokens, 0.2))
    seconds = time.perf_counter() - started
    check = parse_check(_chat(endpoint, check_messages(prompts, report.text), 256, 0.0))
    return ShadowAnswer(report.text, check.positive, check.severity, check.confidence,
                        check.summary, round(seconds, 3))


class ShadowReader:
    def __init__(self, prompts: Prompts, db: Database, endpoint: Endpoint, *,
                 per_minute: float, workers: int = 2, max_tokens: int = 1024) -> None:
        self.prompts = prompts
        self.db = db
        self.endpoint = endpoint
        self.workers = workers
        self.max_tokens = max_tokens
        # Ten seconds' worth saved, at least one read: a burst of studies is sampled.
        self.bucket = TokenBucket(per_minute / 60, max(1.0, per_minute / 6))
        self.in_flight: set[asyncio.Task] = set()
        self.answers: list[dict] = []  # waiting to be stored (flush)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, as the conversion and SR workers: this process has threads
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def offer(self, key: str, messages: list[dict]) -> bool:
        """Takes a copy of the read of ``key`` when the rate and a free worker allow;
        never waits. Returns whether it was taken."""
        if len(self.in_flight) >= self.workers:
            metrics.SHADOW_READS.labels("skipped_busy").inc()
            return False
        if not self.bucket.take():
            metrics.SHADOW_READS.labels("skipped_rate").inc()
            return False
        task = asyncio.get_running_loop().create_task(self.read(key, messages))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return True

    async def read(self, key: str, messages: list[dict]) -> None:
        """The shadow's read of ``key`` in a worker process, stored apart; a failure is
        counted and logged, nothing else."""
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._executor(), read_in_worker,
                                                self.endpoint, self.prompts, messages,
                                                self.max_tokens)
        except ShadowFailed as exc:
            metrics.SHADOW_READS.labels("failed").inc()
            log.warning("shadow read failed", extra={"uid": key, "reason": str(exc)})
            return
        except BrokenProcessPool:  # a worker died (killed, out of memory): new ones next
            metrics.SHADOW_READS.labels("failed").inc()
            log.warning("a shadow worker process died; the copy is dropped")
            self.close()
            return
        self.answers.append({
            "uid": key, "text": answer.text, "positive": answer.positive,
            "severity": answer.severity, "confidence": answer.confidence,
            "summary": answer.summary, "model": self.endpoint.model,
            "endpoint": self.endpoint.name, "latency": answer.seconds,
            "prompt_version": self.prompts.version})
        if len(self.answers) >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        """Stores the answers waiting, in one transaction (a transaction per answer cost
        the relay more CPU than the hand-over to the worker: bench/README.md)."""
        rows, self.answers = self.answers, []
        if not rows:
            return
        try:
            await self.db.write(repo.save_shadow_reads, rows)
        except Exception:  # noqa: BLE001 - a database outage: these copies are dropped
            metrics.SHADOW_READS.labels("failed").inc(len(rows))
            log.warning("shadow reads not stored", extra={"count": len(rows)}, exc_info=True)
            return
        metrics.SHADOW_READS.labels("stored").inc(len(rows))

    def close(self, wait: bool = False) -> None:
        """Ends the worker processes (``wait``: until they have)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    async def run(self, every: float = FLUSH_SECONDS) -> None:
        """Stores the answers every ``every`` seconds (or a batch at once); holds the
        worker processes for the role's lifetime (started at the first copy) and ends
        them with it."""
        try:
            while True:
                await asyncio.sleep(every)
                await self.flush()
        finally:
            for task in list(self.in_flight):
                task.cancel()
            self.close()
            with contextlib.suppress(Exception):  # (stopping: what can be kept is kept)
                await self.flush()
