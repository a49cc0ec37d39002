"""Rate limit, client address behind trusted proxies, first-start admin."""

import ipaddress

from web.conftest import basic, web_services, web_settings
from xrayvision.db import repo
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.passwords import verify_password
from xrayvision.web.app import init_app
from xrayvision.web.auth import BOOTSTRAP_KEY, Authenticator, parse_basic
from xrayvision.web.health import Readiness
from xrayvision.web.ratelimit import SlidingWindow, client_address
from xrayvision.web.service import bootstrap_admin


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


async def test_first_start_admin_is_created_once_and_only_hashed(sqlite_db):
    hashed, password = await bootstrap_admin(sqlite_db)
    assert password and verify_password(password, hashed)
    assert sqlite_db.read_sync(repo.get_state, BOOTSTRAP_KEY) == hashed
    assert password not in hashed
    again, none = await bootstrap_admin(sqlite_db)
    assert (again, none) == (hashed, None)
