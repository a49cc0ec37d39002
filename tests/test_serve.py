"""The process: `make run` from a clean data folder, start-up without a database,
refusal of an outdated schema, clean stop on SIGTERM."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from support.pgserver import PgServer, free_port

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            body = resp.read()
            is_json = resp.headers.get_content_type() == "application/json"
            return resp.status, json.loads(body) if is_json else {"text": body.decode()}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def wait_for(url: str, status: int, timeout: float = 60, proc=None) -> dict:
    deadline = time.monotonic() + timeout
    last = (0, {})
    while time.monotonic() < deadline:
        last = get(url)
        if last[0] == status:
            return last[1]
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}; last: {last}")


def env_for(tmp_path: Path, port: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
    env.update({"XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
                "XRAYVISION_WEB_PORT": str(port), "XRAYVISION_SERVER_SHUTDOWN_GRACE": "10",
                "XRAYVISION_DICOM_PORT": str(free_port()), "XRAYVISION_DICOM_HOST": "127.0.0.1",
                "XRAYVISION_MAINTENANCE_BACKUP_KEEP": "2", **extra})
    return env


def stop(proc: subprocess.Popen, group: bool = False, timeout: float = 20) -> str:
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_make_run_smoke(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env_for(tmp_path, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/healthz", 200, 180, proc) == {"status": "ok"}
        ready = wait_for(f"http://127.0.0.1:{port}/readyz", 200, 30, proc)
        assert ready["status"] == "ready"
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "xrayvision_ready 1.0" in body["text"]
        # No model server here: the relay finds the primary down and says so.
        for _ in range(100):
            _, body = get(f"http://127.0.0.1:{port}/metrics")
            if 'xrayvision_model_endpoint_up{endpoint="primary"} 0.0' in body["text"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the primary model endpoint never showed as down")
        assert (tmp_path / "data" / "xrayvision.db").is_file()
    finally:
        out = stop(proc, group=True)
    assert "database migrated" in out and "DICOM SCP listening" in out
    assert "web role ready" in out and "exams wait in the queue" in out
    assert "created user 'admin' with password" in out  # no [users]: printed once
    assert "stopped" in out.splitlines()[-1]


def test_serve_refuses_an_outdated_schema(tmp_path):
    port = free_port()
    result = subprocess.run([str(XRAYVISION), "serve"], cwd=tmp_path,
                            env=env_for(tmp_path, port), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "run `xrayvision migrate`" in result.stderr


def test_serve_with_bad_config_names_the_key(tmp_path):
    result = subprocess.run([str(XRAYVISION), "serve"], cwd=tmp_path,
                            env=env_for(tmp_path, free_port(), XRAYVISION_RELAY_CONCURRENCY="x"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "[relay] concurrency = 'x'" in result.stderr
    assert "expected an integer" in result.stderr


def test_serve_waits_for_an_unreachable_database_then_becomes_ready(tmp_path):
    server = PgServer()  # port chosen, server not started yet
    port = free_port()
    url = server.url()
    proc = subprocess.Popen(
        [str(XRAYVISION), "serve", "--migrate", "--roles", "relay,web"], cwd=tmp_path,
        env=env_for(tmp_path, port, XRAYVISION_DATABASE_URL=url),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/healthz", 200, 60, proc)
        body = wait_for(f"http://127.0.0.1:{port}/readyz", 503, 30, proc)
        assert "database unreachable" in body["detail"]
        server.start()
        server.create_database("xrayvision")
        ready = wait_for(f"http://127.0.0.1:{port}/readyz", 200, 60, proc)
        assert ready["detail"].startswith("schema at")
    finally:
        out = stop(proc)
        server.destroy()
    assert "database unreachable at start-up; retrying" in out
    assert proc.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signals(tmp_path, signum):
    port = free_port()
    env = env_for(tmp_path, port)
    subprocess.run([str(XRAYVISION), "migrate"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([str(XRAYVISION), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(f"http://127.0.0.1:{port}/readyz", 200, 60, proc)
    started = time.monotonic()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert time.monotonic() - started < 10
    assert "shutting down" in out and out.rstrip().endswith("stopped")


async def test_a_failing_role_is_restarted_and_a_persistent_failure_ends_the_process(
        tmp_path):
    from xrayvision.db.engine import Database, DatabaseOptions
    from xrayvision.serve import supervise

    db = Database(DatabaseOptions(url=f"sqlite:///{tmp_path / 'x.db'}"))
    runs, restarts = [], []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("a bug")

    await asyncio.wait_for(supervise("relay", flaky, db, limit=5,
                                     before_restart=lambda: restarts.append(1)), 10)
    assert len(runs) == 3 and len(restarts) == 2  # restarted twice, then it finished

    async def broken() -> None:
        raise RuntimeError("always")

    with pytest.raises(RuntimeError, match="always"):
        await asyncio.wait_for(supervise("web", broken, db, limit=2), 10)
    db.close()
