"""An in-process ingest role (SCP + conversion worker) on the test's database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.pgserver import free_port
from xrayvision.config import Settings, load_settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.dicom.transport import BufferedDUL
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.roles.ingest import run_ingest


def ingest_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
        "XRAYVISION_DICOM_HOST": "127.0.0.1",
        "XRAYVISION_DICOM_PORT": str(free_port()),
        "XRAYVISION_DICOM_CONVERT_WORKERS": "1",
    }
    return load_settings(tmp_path, env={**base, **env})


@dataclass
class Ingest:
    settings: Settings
    db: Database
    store: FilesystemStore
    bus: LocalBus
    port: int

    async def storescu(self, *files: Path, args: tuple[str, ...] = (),
                       calling: str = "MODALITY1", called: str = "XRAYVISION"):
        """DCMTK storescu in a thread (the loop keeps converting meanwhile)."""
        cmd = ["storescu", "-aet", calling, "-aec", called, *args, "127.0.0.1",
               str(self.port), *map(str, files)]
        return await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=120,
            env={**os.environ, "TCP_NODELAY": "1"})

    async def converted(self, wait: float = 60) -> dict[str, int]:
        """Waits until nothing is left in status none; returns the status counts."""
        for _ in range(int(wait / 0.1)):
            counts = await self.db.read(repo.queue_counts)
            if counts["none"] == 0:
                return counts
            await asyncio.sleep(0.1)
        raise AssertionError(f"conversion did not finish: {counts}")


async def _wait_port(port: int, task: asyncio.Task, wait: float = 60) -> None:
    """Until the SCP listens (it starts once the conversion processes are up)."""
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        if task.done():  # failed to start: its exception, not a time-out
            task.result()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("SCP did not start")


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings, db: Database, tmp_path: Path):
    store = FilesystemStore(tmp_path / "images")
    bus = LocalBus()
    await bus.start()
    task = asyncio.create_task(run_ingest(settings, db, store, bus))
    try:
        await _wait_port(settings.dicom.port, task)
        yield Ingest(settings, db, store, bus, settings.dicom.port)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def ingest(tmp_path, db):
    async with running_ingest(ingest_settings(tmp_path), db, tmp_path) as running:
        yield running


def count_streamed(monkeypatch) -> list[int]:
    """Sizes of the writes our fragment path (BufferedDUL) makes, from now on."""
    streamed = []
    original = BufferedDUL._write
    monkeypatch.setattr(BufferedDUL, "_write", lambda self, stream, fd, pending: (
        streamed.append(sum(map(len, pending))) or original(self, stream, fd, pending)))
    return streamed
