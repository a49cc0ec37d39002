"""A small async TTL cache with single flight: concurrent misses of one key share one
computation. The API keeps expensive aggregates (list totals, statistics) here for a few
seconds; a dashboard that is updated live does not need them exact to the second."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


class TTLCache:
    def __init__(self, ttl: float, size: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        if self.ttl <= 0:
            return await compute()
        item = self._values.get(key)
        if item is not None and item[0] > self.clock():
            self._values.move_to_end(key)
            return item[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; nobody else must
            raise
        else:
            future.set_result(value)
            self._values[key] = (self.clock() + self.ttl, value)
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)
            return value
        finally:
            del self._pending[key]

    def clear(self) -> None:
        self._values.clear()
