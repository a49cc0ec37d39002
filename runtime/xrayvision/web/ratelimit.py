"""Per-client sliding-window rate limit and the client address behind trusted proxies.

The window keeps each address's request times of the last ``window`` seconds; memory is
bounded: at most ``max_clients`` addresses (the least recently seen goes first) and an
address not heard from for a whole window is forgotten (a cachetools ``TTLCache``).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from cachetools import TTLCache


class SlidingWindow:
    def __init__(self, limit: int, window: float = 60.0, *, max_clients: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._hits: TTLCache[str, deque[float]] = TTLCache(max_clients, window, timer=clock)

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, client: str) -> float:
        """Counts a request; returns 0 when allowed, else the seconds until one is."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        horizon = now - self.window
        times = self._hits.get(client) or deque()
        while times and times[0] <= horizon:
            times.popleft()
        self._hits[client] = times  # (re)starts its time to live: idle for a window, gone
        if len(times) >= self.limit:
            return max(0.001, times[0] + self.window - now)
        times.append(now)
        return 0.0


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


Networks = Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]


def in_networks(address: str, networks: Networks) -> bool:
    """Whether ``address`` (an IP, else False) is in one of ``networks`` (pure)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: str, trusted: Networks) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    trusted = tuple(trusted)

    def is_trusted(address: str) -> bool:
        return in_networks(address, trusted)

    if not peer or not trusted or not is_trusted(peer) or not forwarded_for:
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: trust none of it
        if not is_trusted(hop):
            return hop
    return peer
