"""A relay process killed with SIGKILL in the middle of a model request: its exam (read
per image) or study (read per study) is reclaimed after the lease and read exactly once
by another relay process; nothing is lost."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import records
from support.model_stub import Stub
from support.pgserver import free_port
from xrayvision.db import repo
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import DONE, PROCESSING, QUEUED, Study
from xrayvision.db.repo import ExamInfo
from xrayvision.images import FilesystemStore

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def relay_process(folder: Path, stub_url: str, read_per: str) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "XRAYVISION_AI_PRIMARY_URL": stub_url,
           "XRAYVISION_AI_READ_PER": read_per,
           "XRAYVISION_PROCESSING_LEASE_SECONDS": "2", "XRAYVISION_RELAY_SWEEP_INTERVAL": "0.3",
           "XRAYVISION_WEB_PORT": str(free_port()), "XRAYVISION_AI_TIMEOUT": "60"}
    return subprocess.Popen([str(XRAYVISION), "serve", "--roles", "relay"], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report_requests(stub: Stub) -> int:
    return sum(1 for r in stub.state.requests if isinstance(r["messages"][1]["content"], list))


def receive(db, read_per: str) -> None:
    """Two images of one study recorded and converted as ingest does it."""
    def write(session):
        for uid in ("1.2.3", "1.2.4"):
            records.add_exam(session, ExamInfo(uid=uid, study_uid="2.5", region="chest"))
            repo.finish_conversion(session, uid, QUEUED)
            repo.refresh_study(session, "2.5", uid, became_readable=True,
                               read_per_study=read_per == "study", quiet=0, threshold=5)
    db.write_sync(write)


def reading(db, read_per: str) -> str:
    """The status of what is read: the exam 1.2.3, or the study."""
    if read_per == "study":
        return db.read_sync(lambda s: s.get(Study, "2.5", populate_existing=True)).status
    return db.read_sync(repo.get_exam, "1.2.3").exam.status


@pytest.mark.parametrize("read_per", ["image", "study"])
async def test_killed_relay_read_is_reclaimed_and_done_once(tmp_path, read_per):
    db = Database(DatabaseOptions(url=f"sqlite:///{tmp_path / 'data' / 'xrayvision.db'}"))
    (tmp_path / "data").mkdir()
    upgrade(db.engine)
    for uid in ("1.2.3", "1.2.4"):
        FilesystemStore(tmp_path / "data" / "images").put(uid, "png", b"\x89PNG fake")
    receive(db, read_per)
    stub = await Stub().start()
    stub.state.delay = 30  # the first relay will be killed while waiting for this
    first = relay_process(tmp_path, stub.url, read_per)
    try:
        for _ in range(300):
            if report_requests(stub) >= 1:
                break
            await asyncio.sleep(0.05)
        assert report_requests(stub) >= 1, "the first relay sent its request"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert reading(db, read_per) == PROCESSING  # still leased, for now
        sent = report_requests(stub)
        stub.state.delay = 0
        second = relay_process(tmp_path, stub.url, read_per)
        try:
            for _ in range(400):
                if db.read_sync(repo.queue_counts)[DONE] == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    finally:
        await stub.stop()
    row = db.read_sync(repo.get_exam, "1.2.3")
    assert row.exam.status == DONE and row.ai is not None and row.ai.severity == 6
    assert row.ai.version == 1  # read once: no second version
    if read_per == "study":
        study = db.read_sync(lambda s: s.get(Study, "2.5", populate_existing=True))
        assert (study.status, study.attempts) == (DONE, 1)  # the lost lease counted once
        assert row.ai.uid == "2.5"
        assert report_requests(stub) == sent + 1, "one request per study"
    else:
        assert row.exam.attempts == 1  # the lost lease counted once
        assert report_requests(stub) == sent + 2  # 1.2.3 again, and 1.2.4
    db.close()
