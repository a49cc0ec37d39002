"""What a peer on the wire can make the SCP hold (raw sockets and pynetdicom): a PDU
announcing more than the limit is refused before any of it is buffered (A-ABORT), before
and inside an association; a peer that stops in the middle of a PDU is dropped after
``[dicom] read_timeout`` and its association slot freed; the listen backlog is the
configured one (``ss``), not socketserver's 5."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom.conftest import ingest_settings, running_ingest


def aborted_or_closed(sock: socket.socket, wait: float) -> bytes:
    """What the SCP answers (an A-ABORT PDU starts with 0x07) or b"" once it closed."""
    sock.settimeout(wait)
    try:
        return sock.recv(64)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def test_a_huge_announced_pdu_is_refused_before_it_is_read(tmp_path, sqlite_db):
    settings = ingest_settings(tmp_path)
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        def attack() -> tuple[bytes, int]:
            with socket.create_connection(("127.0.0.1", ingest.port)) as sock:
                # an A-ASSOCIATE-RQ announcing ~4 GiB, then 8 MiB of it
                sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
                sent = 0
                try:
                    for _ in range(128):
                        sock.sendall(b"\0" * 65536)
                        sent += 65536
                except OSError:
                    pass
                return aborted_or_closed(sock, 10), sent

        answer, sent = await asyncio.to_thread(attack)
        assert answer[:1] in (b"\x07", b"")  # A-ABORT, or the connection closed
        assert answer == b"" or answer[0] == 0x07
        # the SCP still serves
        assert await asyncio.to_thread(echo, ingest.port)


def echo(port: int) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


async def test_a_p_data_over_the_negotiated_maximum_aborts_the_association(tmp_path,
                                                                            sqlite_db):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_MAX_PDU="65536")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        def attack() -> bool:
            ae = AE(ae_title="SENDER")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", ingest.port, ae_title="XRAYVISION")
            assert assoc.is_established
            assert assoc.acceptor.maximum_length == 65536
            raw = assoc.dul.socket.socket
            raw.sendall(struct.pack(">BBL", 0x04, 0, 1024 * 1024 * 1024))  # 1 GiB P-DATA
            raw.sendall(b"\0" * 65536)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not assoc.is_aborted:
                time.sleep(0.05)
            return assoc.is_aborted

        assert await asyncio.to_thread(attack)
        assert await asyncio.to_thread(echo, ingest.port)


async def test_slow_loris_connections_are_dropped_and_slots_freed(tmp_path, sqlite_db):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_READ_TIMEOUT="1",
                               XRAYVISION_DICOM_MAX_ASSOCIATIONS="4")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        def attack() -> list[bytes]:
            socks = [socket.create_connection(("127.0.0.1", ingest.port)) for _ in range(8)]
            try:
                for sock in socks:  # 16 bytes of an A-ASSOCIATE-RQ, then silence
                    sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0" * 10)
                started = time.monotonic()
                answers = [aborted_or_closed(sock, 5) for sock in socks]
                assert time.monotonic() - started < 5
                return answers
            finally:
                for sock in socks:
                    sock.close()

        answers = await asyncio.to_thread(attack)
        assert all(a == b"" or a[0] == 0x07 for a in answers), answers
        for _ in range(40):  # the dropped associations' threads end within moments
            if await asyncio.to_thread(echo, ingest.port):
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("the slots of dropped connections were not freed")


async def test_silent_connections_hold_no_association_slot(tmp_path, sqlite_db):
    # 16 peers that connect and send part of a PDU (or nothing) and stay, with 4 slots
    # and a read timeout far longer than the test: a sender is served meanwhile.
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_READ_TIMEOUT="60",
                               XRAYVISION_DICOM_MAX_ASSOCIATIONS="4")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        def attack_then_echo() -> tuple[list[bool], float]:
            socks = [socket.create_connection(("127.0.0.1", ingest.port)) for _ in range(16)]
            try:
                for sock in socks[:8]:
                    sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0" * 10)
                time.sleep(0.5)  # every one of them has its acceptor thread
                started = time.monotonic()
                answered = [echo(ingest.port) for _ in range(6)]  # more than the 4 slots
                elapsed = time.monotonic() - started
                for sock in socks:  # still connected: nothing was closed under them
                    sock.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        sock.recv(1)
                return answered, elapsed
            finally:
                for sock in socks:
                    sock.close()

        answered, elapsed = await asyncio.to_thread(attack_then_echo)
        assert answered == [True] * 6
        assert elapsed < 5, elapsed


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
async def test_the_listen_backlog_is_the_configured_one(tmp_path, sqlite_db):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_LISTEN_BACKLOG="200")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        out = (await asyncio.to_thread(
            subprocess.run, ["ss", "-ltnH", f"sport = :{ingest.port}"], capture_output=True,
            text=True, check=True)).stdout.split()
        assert out and int(out[2]) == 200, out  # Send-Q of a listening socket: its backlog
