"""Rate limit, client address behind trusted proxies, first-start admin, login
guessing (per name and address, parallel attempts, lockout)."""

import asyncio
import ipaddress

from sqlalchemy import select

from web.conftest import basic, web_services, web_settings
from xrayvision.db.models import AuditLog
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.web.app import init_app
from xrayvision.web.auth import Authenticator, LoginGuard, parse_basic
from xrayvision.web.health import Readiness
from xrayvision.web.ratelimit import SlidingWindow, client_address


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_sliding_window():
    clock = Clock()
    window = SlidingWindow(3, 60, clock=clock)
    assert [window.hit("a") for _ in range(3)] == [0, 0, 0]
    assert window.hit("a") == 60.0  # the first of the three leaves the window in 60 s
    clock.now += 30
    assert window.hit("b") == 0
    assert window.hit("a") == 30.0
    clock.now += 30.5
    assert window.hit("a") == 0  # the window slid past the first three


def test_memory_is_bounded_and_stale_clients_evicted():
    clock = Clock()
    window = SlidingWindow(10, 60, max_clients=100, clock=clock)
    for i in range(1000):
        window.hit(f"10.0.{i // 256}.{i % 256}")
    assert len(window) == 100
    clock.now += 61
    window.hit("1.1.1.1")
    assert len(window) == 1  # every idle address went


def test_client_address_trusts_only_configured_proxies():
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("10.1.2.3", "203.0.113.9", proxies) == "203.0.113.9"
    assert client_address("10.1.2.3", "198.51.100.1, 203.0.113.9, 10.2.2.2", proxies) == (
        "203.0.113.9")
    assert client_address("192.0.2.7", "203.0.113.9", proxies) == "192.0.2.7"  # not a proxy
    assert client_address("10.1.2.3", "", proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", "garbage", proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", "203.0.113.9", []) == "10.1.2.3"


def test_parse_basic():
    assert parse_basic(basic("admin")["Authorization"]) == ("admin", "admin-pw")
    assert parse_basic("Basic !!!") is None
    assert parse_basic("Bearer x") is None
    assert parse_basic("Basic " + "bm9jb2xvbg==") is None  # "nocolon"


async def test_unknown_user_takes_a_real_verification():
    auth = Authenticator({})
    identity, fresh = await auth.verify("ghost", "x")
    assert identity is None and fresh


async def test_rate_limit_answers_429_with_retry_after_per_client(aiohttp_client, tmp_path,
                                                                  sqlite_db):
    settings = web_settings(tmp_path, rate_limit=3,
                            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    app = init_app(settings, Readiness())
    bus = LocalBus()
    async with web_services(app, sqlite_db, FilesystemStore(tmp_path), bus):
        client = await aiohttp_client(app)
        h = basic("viewer")
        for _ in range(3):
            resp = await client.get("/api/config", headers={**h, "X-Forwarded-For": "203.0.113.1"})
            assert resp.status == 200
        resp = await client.get("/api/config", headers={**h, "X-Forwarded-For": "203.0.113.1"})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"] == "rate_limited"
        # Another client behind the same proxy is not affected; health checks never are.
        resp = await client.get("/api/config", headers={**h, "X-Forwarded-For": "203.0.113.2"})
        assert resp.status == 200
        for _ in range(5):
            assert (await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.1"})
                    ).status == 200


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(aiohttp_client, tmp_path,
                                                              sqlite_db):
    app = init_app(web_settings(tmp_path, rate_limit=2), Readiness())
    async with web_services(app, sqlite_db, FilesystemStore(tmp_path), LocalBus()):
        client = await aiohttp_client(app)
        h = basic("viewer")
        statuses = [(await client.get("/api/config", headers={
            **h, "X-Forwarded-For": f"203.0.113.{i}"})).status for i in range(3)]
        assert statuses == [200, 200, 429]  # all counted against the real peer


def test_login_guard_counts_per_name_and_address_and_locks_out():
    clock = Clock()
    guard = LoginGuard(max_failures=3, lockout=60, clock=clock)
    waits = []
    for _ in range(3):  # three wrong passwords for alice, one after the other
        verdict = guard.begin("10.0.0.1", "alice")
        waits.append(verdict.wait)
        guard.end("10.0.0.1", "alice", ok=False)
    assert waits == [0.0, 0.05, 0.1]
    locked = guard.begin("10.0.0.2", "alice")  # from anywhere: the name is locked
    assert locked.locked == "user" and locked.retry_after == 60 and locked.newly
    again = guard.begin("10.0.0.2", "alice")
    assert again.locked == "user" and not again.newly
    # bob's success at the same address does not clear alice's count
    assert not guard.begin("10.0.0.1", "bob").locked
    guard.end("10.0.0.1", "bob", ok=True)
    assert guard.begin("10.0.0.3", "alice").locked == "user"
    clock.now += 61  # the lockout served: a fresh start
    fresh = guard.begin("10.0.0.3", "alice")
    assert not fresh.locked and fresh.wait == 0.0
    guard.end("10.0.0.3", "alice", ok=True)


def test_login_guard_counts_parallel_attempts_and_addresses_twice_the_limit():
    clock = Clock()
    guard = LoginGuard(max_failures=3, lockout=60, clock=clock)
    started = [guard.begin("10.0.0.9", "carol") for _ in range(5)]  # all in flight at once
    assert [bool(v.locked) for v in started] == [False, False, False, True, True]
    for _ in range(3):
        guard.end("10.0.0.9", "carol", ok=False)
    names = [f"user{i}" for i in range(6)]  # one address guessing many names
    verdicts = []
    for name in names:
        verdicts.append(guard.begin("10.0.0.8", name))
        guard.end("10.0.0.8", name, ok=False)
    assert [v.locked for v in verdicts] == [""] * 6
    assert guard.begin("10.0.0.8", "user9").locked == "address"  # 2 x 3 failures


async def test_fifty_parallel_wrong_passwords_lock_the_name_out(aiohttp_client, tmp_path,
                                                              sqlite_db):
    settings = web_settings(tmp_path, login_max_failures=10, login_lockout=2.0)
    app = init_app(settings, Readiness())
    async with web_services(app, sqlite_db, FilesystemStore(tmp_path), LocalBus()):
        client = await aiohttp_client(app)
        started = asyncio.get_running_loop().time()
        answers = await asyncio.gather(*(
            client.get("/api/config", headers=basic("rad", f"guess{i}")) for i in range(50)))
        elapsed = asyncio.get_running_loop().time() - started
        statuses = sorted(r.status for r in answers)
        assert statuses.count(401) == 10 and statuses.count(429) == 40, statuses
        locked = next(r for r in answers if r.status == 429)
        assert int(locked.headers["Retry-After"]) >= 1
        assert (await locked.json())["error"] == "locked_out"
        # the right password is refused too: the lockout runs from the last failure
        assert (await client.get("/api/config", headers=basic("rad"))).status == 429
        # another user from the same address still gets in, and is not slowed down
        assert (await client.get("/api/config", headers=basic("viewer"))).status == 200
        audit = await sqlite_db.read(lambda s: [(a.action, a.username) for a in s.scalars(
            select(AuditLog).where(AuditLog.action.like("login%"))).all()])
        assert audit.count(("login.locked", "rad")) == 1
        assert audit.count(("login.failed", "rad")) == 10
        await asyncio.sleep(2.1)  # the lockout ends
        assert (await client.get("/api/config", headers=basic("rad"))).status == 200
    print(f"50 parallel wrong passwords: 10 checked, 40 locked out, in {elapsed:.1f} s")
