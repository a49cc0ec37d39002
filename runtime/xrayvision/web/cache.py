"""A small async TTL cache with single flight: concurrent misses of one key share one
computation. The API keeps expensive aggregates (list totals, statistics) here for a few
seconds; a dashboard that is updated live does not need them exact to the second.

With ``stale_while_revalidate`` an expired value is still answered at once while one
background computation refreshes it, so only the very first request of a key waits (the
statistics over a million exams take seconds to compute)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from cachetools import LRUCache

log = logging.getLogger(__name__)


class AggregateCache:
    def __init__(self, ttl: float, size: int = 256,
                 clock: Callable[[], float] = time.monotonic,
                 stale_while_revalidate: bool = False) -> None:
        self.ttl = ttl
        self.stale_while_revalidate = stale_while_revalidate
        self._refreshing: set[asyncio.Task] = set()
        self.size = size
        self.clock = clock
        # Expiry is kept here, not by a TTLCache: an expired value is still answered
        # while it is refreshed (stale_while_revalidate).
        self._values: LRUCache[Hashable, tuple[float, Any]] = LRUCache(maxsize=size)
        self._pending: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        if self.ttl <= 0:
            return await compute()
        item = self._values.get(key)
        if item is not None and item[0] > self.clock():
            return item[1]
        if item is not None and self.stale_while_revalidate:
            if key not in self._pending:
                self._pending[key] = asyncio.get_running_loop().create_future()
                task = asyncio.create_task(self._refresh(key, compute))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)
            return item[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self._pending[key] = asyncio.get_running_loop().create_future()
        return await self._compute(key, compute)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Runs ``compute`` for the future already registered in ``_pending[key]``."""
        future = self._pending[key]
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; nobody else must
            raise
        else:
            future.set_result(value)
            self._values[key] = (self.clock() + self.ttl, value)
            return value
        finally:
            del self._pending[key]

    async def _refresh(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> None:
        try:
            await self._compute(key, compute)
        except Exception:  # noqa: BLE001 - the stale value stays; the next request retries
            log.warning("background refresh failed; the previous answer stays",
                        exc_info=True)

    def clear(self) -> None:
        self._values.clear()
