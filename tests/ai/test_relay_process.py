"""A relay process killed with SIGKILL in the middle of a model request: its exam is
reclaimed after the lease and processed exactly once by another relay process."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from support import records
from support.model_stub import Stub
from support.pgserver import free_port
from xrayvision.db import repo
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import DONE, QUEUED
from xrayvision.db.repo import ExamInfo
from xrayvision.images import FilesystemStore

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def relay_process(folder: Path, stub_url: str) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "XRAYVISION_AI_PRIMARY_URL": stub_url,
           "XRAYVISION_PROCESSING_LEASE_SECONDS": "2", "XRAYVISION_RELAY_SWEEP_INTERVAL": "0.3",
           "XRAYVISION_WEB_PORT": str(free_port()), "XRAYVISION_AI_TIMEOUT": "60"}
    return subprocess.Popen([str(XRAYVISION), "serve", "--roles", "relay"], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report_requests(stub: Stub) -> int:
    return sum(1 for r in stub.state.requests if isinstance(r["messages"][1]["content"], list))


async def test_killed_relay_exam_is_reclaimed_and_processed_once(tmp_path):
    db = Database(DatabaseOptions(url=f"sqlite:///{tmp_path / 'data' / 'xrayvision.db'}"))
    (tmp_path / "data").mkdir()
    upgrade(db.engine)
    FilesystemStore(tmp_path / "data" / "images").put("1.2.3", "png", b"\x89PNG fake")
    db.write_sync(records.add_exam, ExamInfo(uid="1.2.3", region="chest", status=QUEUED))
    stub = await Stub().start()
    stub.state.delay = 30  # the first relay will be killed while waiting for this
    first = relay_process(tmp_path, stub.url)
    try:
        for _ in range(300):
            if report_requests(stub) == 1:
                break
            await asyncio.sleep(0.05)
        assert report_requests(stub) == 1, "the first relay sent its request"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert db.read_sync(repo.queue_counts)["processing"] == 1  # still leased, for now
        stub.state.delay = 0
        second = relay_process(tmp_path, stub.url)
        try:
            for _ in range(400):
                if db.read_sync(repo.queue_counts)[DONE] == 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    finally:
        await stub.stop()
    row = db.read_sync(repo.get_exam, "1.2.3")
    assert row.exam.status == DONE and row.exam.attempts == 1  # the lost lease counted once
    assert row.ai is not None and row.ai.severity == 6
    assert report_requests(stub) == 2, "one request died with the first relay, one finished"
    db.close()
