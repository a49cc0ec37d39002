"""Faults under ``xrayvision serve`` (a real process, a real PostgreSQL, DCMTK sending, the
stub model reading):

- PostgreSQL stopped for 30 s under ``--roles ingest,relay,web``: the process stays up,
  readiness is false and the API answers 503 with Retry-After meanwhile, the SCP answers
  0xA700, and within seconds of the database coming back every acknowledged image is read,
  none stuck in ``processing``;
- the process SIGKILLed while its relay holds exams: the next one reclaims them at once
  (not after the 600 s lease) and reads each; the killed one's conversion processes end
  with it;
- a full disk (SQLite, images, TMPDIR on it): unready with the reason, 503 not 500 from
  the API, 0xA700 to a sender and no partial file; ready again once space is freed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.model_stub import Stub, StubState
from support.pgserver import PgServer, free_port
from support.xrays import make_xray, write

BIN = Path(sys.executable).parent
OUTAGE = 30.0


def http(url: str, auth: str = "") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(  # noqa: S310 - our own loopback server
        url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def serve_env(url: str, tmp_path: Path, stub: Stub, roles: str,
              **extra: str) -> tuple[dict[str, str], int, int]:
    """The environment of a ``serve`` process on PostgreSQL ``url`` and the stub model;
    with its web and DICOM ports."""
    web, dicom = free_port(), free_port()
    env = {**os.environ, "XRAYVISION_DATABASE_URL": url,
           "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
           "XRAYVISION_WEB_PORT": str(web), "XRAYVISION_DICOM_PORT": str(dicom),
           "XRAYVISION_DICOM_CONVERT_WORKERS": "1", "XRAYVISION_DICOM_CONVERT_DEFER": "0",
           "XRAYVISION_AI_PRIMARY_URL": stub.url, "XRAYVISION_AI_MODEL": "m",
           "XRAYVISION_SERVER_ROLES": roles, "XRAYVISION_AI_STUDY_QUIET": "1", **extra}
    return env, web, dicom


async def admin_user(password: str) -> tuple[str, str]:
    """The ``[users]`` entry of an admin with ``password`` (hashed by the CLI, as a user
    would) and the Authorization header that logs in as it."""
    hashed = (await asyncio.to_thread(
        subprocess.run, [str(BIN / "xrayvision"), "hash-password", "--stdin"],
        input=password, capture_output=True, text=True, check=True)
    ).stdout.strip().splitlines()[-1]
    return f"admin:{hashed}", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def storescu(port: int, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", "-aet", "MODALITY", "-aec", "XRAYVISION",
                           "127.0.0.1", str(port), str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(400)
async def test_a_database_outage_is_waited_out(tmp_path):
    pg = PgServer().start()
    stub = await Stub(StubState(delay=0.3)).start()
    proc = None
    try:
        url = pg.create_database("xrayvision").replace("postgresql://",
                                                       "postgresql+psycopg://", 1)
        user, auth = await admin_user("outage-pass-123")
        env, web, dicom = serve_env(url, tmp_path, stub, "ingest,relay,web",
                                    XRAYVISION_USERS_ADMIN=user)
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [str(BIN / "xrayvision"), "serve", "--migrate"], env=env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{web}"

        async def until(what, check, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                if await asyncio.to_thread(check):
                    return time.monotonic()
                await asyncio.sleep(0.25)
            raise AssertionError(f"timed out: {what}\n"
                                 + (tmp_path / "serve.log").read_text()[-3000:])

        def exams() -> list[dict]:
            status, _, body = http(f"{base}/api/exams?limit=200", auth)
            return json.loads(body)["exams"] if status == 200 else []

        await until("ready", lambda: http(f"{base}/readyz")[0] == 200, 60)
        files = [write(make_xray(seed=i), tmp_path / f"x{i}.dcm") for i in range(12)]
        acked: list[Path] = []
        for path in files[:4]:
            assert (await asyncio.to_thread(storescu, dicom, path)).returncode == 0
            acked.append(path)
        await until("the first images read", lambda: sum(
            e["status"] == "done" for e in exams()) == 4, 60)

        # The outage: the next images are being received and read when it starts.
        for path in files[4:8]:
            if (await asyncio.to_thread(storescu, dicom, path)).returncode == 0:
                acked.append(path)
        pg.stop()
        stopped = time.monotonic()
        await until("readiness false", lambda: http(f"{base}/readyz")[0] == 503, 15)
        status, headers, body = await asyncio.to_thread(http, f"{base}/api/exams", auth)
        assert status == 503 and headers.get("Retry-After") == "5", (status, body)
        assert json.loads(body)["error"] == "database_unavailable"
        refused = await asyncio.to_thread(storescu, dicom, files[8])
        assert "Refused: OutOfResources" in refused.stderr, refused.stderr  # 0xA700
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
        assert proc.poll() is None  # every role waited
        pg.start()
        back = time.monotonic()
        ready_at = await until("ready again", lambda: http(f"{base}/readyz")[0] == 200, 60)
        for path in files[9:]:
            assert (await asyncio.to_thread(storescu, dicom, path)).returncode == 0
            acked.append(path)
        done_at = await until("every acknowledged image read", lambda: sum(
            e["status"] == "done" for e in exams()) == len(acked), 90)
        listed = exams()
        assert not [e for e in listed if e["status"] in ("processing", "error")], listed
        print(f"outage {OUTAGE:.0f} s: acknowledged {len(acked)}, lost 0; ready "
              f"{ready_at - back:.1f} s and all read {done_at - back:.1f} s after restart")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        await stub.stop()
        pg.destroy()


@pytest.mark.timeout(300)
async def test_a_killed_relays_exams_are_reclaimed_at_once_by_the_next(tmp_path):
    pg = PgServer().start()
    stub = await Stub(StubState(delay=30.0)).start()  # every read is in flight when killed
    procs: list[subprocess.Popen] = []
    try:
        url = pg.create_database("xrayvision").replace("postgresql://",
                                                       "postgresql+psycopg://", 1)
        env, web, dicom = serve_env(url, tmp_path, stub, "ingest,relay")
        log = tmp_path / "serve.log"

        def start() -> subprocess.Popen:
            with log.open("ab") as out:
                procs.append(subprocess.Popen(  # noqa: ASYNC220 - starting does not block
                    [str(BIN / "xrayvision"), "serve", "--migrate"], env=env, cwd=tmp_path,
                    stdout=out, stderr=subprocess.STDOUT))
            return procs[-1]

        def counts(table: str = "studies") -> dict[str, int]:
            """Read per study (the default), the relay holds studies (one image each)."""
            out = pg.psql("xrayvision", f"SELECT status, count(*) FROM {table} GROUP BY status")
            return {k: int(v) for k, v in (line.split("|") for line in out.split())}

        async def until(what, check, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if await asyncio.to_thread(check):
                    return time.monotonic()
                await asyncio.sleep(0.25)
            raise AssertionError(f"timed out: {what}\n{log.read_text()[-3000:]}")

        first = start()
        await until("ready", lambda: http(f"http://127.0.0.1:{web}/readyz")[0] == 200, 60)
        files = [write(make_xray(seed=i), tmp_path / f"x{i}.dcm") for i in range(3)]
        for path in files:
            assert (await asyncio.to_thread(storescu, dicom, path)).returncode == 0
        await until("every exam held by the relay", lambda: counts().get(
            "processing") == 3, 30)
        helpers = children(first.pid)  # conversion processes, multiprocessing's tracker
        assert helpers
        first.kill()
        first.wait()
        stub.state.delay = 0.2  # the model answers quickly from now on
        start()
        await until("the killed process's helpers ended with it", lambda: not any(
            Path(f"/proc/{pid}").exists() for pid in helpers), 10)
        restarted = time.monotonic()
        done_at = await until("every exam read by the next process", lambda: counts().get(
            "done") == 3, 60)
        assert done_at - restarted < 30  # not the 600 s lease
        assert counts("exams") == {"done": 3}
        assert "reclaimed the exams of relay workers that stopped" in log.read_text()
        print(f"SIGKILL with 3 exams held: all read {done_at - restarted:.1f} s after the "
              "restart (lease 600 s)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        await stub.stop()
        pg.destroy()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small disk needs root")
async def test_a_full_disk_makes_the_process_unready_and_refusals_clear(tmp_path):
    # `make run`'s layout (SQLite, images and TMPDIR under the data folder), on a 24 MiB
    # disk that a runaway file fills.
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = await asyncio.to_thread(subprocess.run, [
        "mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    stub = await Stub(StubState(delay=0.1)).start()
    proc = None
    try:
        user, auth = await admin_user("disk-full-pass-123")
        env, web, dicom = serve_env("", tmp_path, stub, "ingest,relay,web",
                                    XRAYVISION_USERS_ADMIN=user,
                                    XRAYVISION_SERVER_DATA_DIR=str(disk / "data"),
                                    XRAYVISION_SERVER_MIN_FREE_MB="4",
                                    TMPDIR=str(disk / "data" / "images" / ".incoming"))
        del env["XRAYVISION_DATABASE_URL"]
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [str(BIN / "xrayvision"), "serve", "--migrate"], env=env, cwd=tmp_path,
                stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{web}"

        async def until(what, check, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                if await asyncio.to_thread(check):
                    return
                await asyncio.sleep(0.25)
            raise AssertionError(f"timed out: {what}\n{log.read_text()[-3000:]}")

        await until("ready", lambda: http(f"{base}/readyz")[0] == 200, 60)
        first = write(make_xray(seed=1), tmp_path / "first.dcm")
        assert (await asyncio.to_thread(storescu, dicom, first)).returncode == 0

        filler = disk / "runaway.log"
        await asyncio.to_thread(subprocess.run, ["dd", "if=/dev/zero", f"of={filler}",
                                                 "bs=1M", "count=64"], capture_output=True)
        await until("unready", lambda: http(f"{base}/readyz")[0] == 503, 15)
        status, _, body = await asyncio.to_thread(http, f"{base}/readyz")
        assert "disk full" in json.loads(body)["detail"], body
        status, headers, body = await asyncio.to_thread(http, f"{base}/api/exams", auth)
        assert status in (200, 503), (status, body)  # a read may still work; never a 500
        if status == 503:
            assert json.loads(body)["error"] == "storage_full" and "Retry-After" in headers
        big = write(make_xray(rows=1024, cols=1024, bits=16, seed=2), tmp_path / "big.dcm")
        refused = await asyncio.to_thread(storescu, dicom, big)
        assert "Refused: OutOfResources" in refused.stderr, refused.stderr  # 0xA700
        assert not [f for f in (disk / "data" / "images" / ".incoming").rglob("*.dcm")]

        filler.unlink()
        await until("ready again", lambda: http(f"{base}/readyz")[0] == 200, 15)
        assert (await asyncio.to_thread(storescu, dicom, big)).returncode == 0
        assert proc.poll() is None
        print(f"disk full: /readyz 503 'disk full', /api/exams {status}, C-STORE 0xA700, "
              "no partial file; ready again and storing once space was freed")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        await stub.stop()
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(disk)])
