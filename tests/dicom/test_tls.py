"""DICOM TLS: plain TCP to the TLS port and TLS without the required client certificate are
refused; a client with a certificate from the configured CA stores, large instances too
(through the receive path's fragment writing)."""

import io
import subprocess

import pytest
from pydicom import dcmread

from support import records
from support.xrays import make_xray, write
from xrayvision.dicom.scp import TLSConfigError, tls_context

from .conftest import count_streamed, ingest_settings, running_ingest


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=XRayVision Test CA", cwd=d)
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", cwd=d)
    return d


def tls_settings(tmp_path, pki, **extra):
    return ingest_settings(tmp_path, XRAYVISION_DICOM_TLS_CERT=str(pki / "server.crt"),
                           XRAYVISION_DICOM_TLS_KEY=str(pki / "server.key"), **extra)


def test_incomplete_tls_settings_are_refused(tmp_path, pki):
    with pytest.raises(TLSConfigError, match="needs both"):
        tls_context(ingest_settings(tmp_path, XRAYVISION_DICOM_TLS_CERT=str(pki / "ca.crt")))
    with pytest.raises(TLSConfigError, match="unusable"):
        tls_context(ingest_settings(tmp_path, XRAYVISION_DICOM_TLS_CERT=str(pki / "ca.crt"),
                                    XRAYVISION_DICOM_TLS_KEY=str(pki / "server.key")))


async def test_tls_rules(tmp_path, pki, db):
    settings = tls_settings(tmp_path, pki, XRAYVISION_DICOM_TLS_CA=str(pki / "ca.crt"))
    path = write(make_xray(), tmp_path / "x.dcm")
    trust = ("+cf", str(pki / "ca.crt"))
    async with running_ingest(settings, db, tmp_path) as ingest:
        plain = await ingest.storescu(path)
        assert plain.returncode != 0, "plain TCP to the TLS port"
        anonymous = await ingest.storescu(path, args=("+tla", *trust))
        assert anonymous.returncode != 0, "TLS without a client certificate"
        assert await ingest.db.read(records.count_exams) == 0
        good = await ingest.storescu(
            path, args=("+tls", str(pki / "client.key"), str(pki / "client.crt"), *trust))
        assert good.returncode == 0, good.stderr
        await ingest.converted()
        assert await ingest.db.read(records.count_exams) == 1


async def test_tls_without_client_certificates(tmp_path, pki, sqlite_db):
    settings = tls_settings(tmp_path, pki)
    path = write(make_xray(), tmp_path / "x.dcm")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await ingest.storescu(path, args=("+tla", "+cf", str(pki / "ca.crt")))
        assert result.returncode == 0, result.stderr
        await ingest.converted()
        assert await ingest.db.read(records.count_exams) == 1


async def test_a_large_instance_over_tls_takes_the_fragment_path_unchanged(
        tmp_path, pki, sqlite_db, monkeypatch):
    streamed = count_streamed(monkeypatch)
    settings = tls_settings(tmp_path, pki, XRAYVISION_DICOM_KEEP_DICOM="true")
    sent = make_xray(rows=1500, cols=1200, bits=16, seed=5)
    path = write(sent, tmp_path / "big.dcm")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await ingest.storescu(path, args=("+tla", "+cf", str(pki / "ca.crt")))
        assert result.returncode == 0, result.stderr
        await ingest.converted()
        stored = dcmread(io.BytesIO(ingest.store.get(sent.SOPInstanceUID, "dcm")))
    assert stored == dcmread(path)
    assert sum(streamed) > 0.9 * path.stat().st_size


async def test_a_silent_peer_does_not_hold_up_tls_senders(tmp_path, pki, sqlite_db):
    # The TLS handshake of a connection that sends nothing must not keep the server from
    # accepting others (it runs in the connection's own thread, bounded by read_timeout).
    import asyncio
    import socket
    import time

    settings = tls_settings(tmp_path, pki, XRAYVISION_DICOM_READ_TIMEOUT="60")
    path = write(make_xray(), tmp_path / "x.dcm")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        silent = [socket.create_connection(("127.0.0.1", ingest.port)) for _ in range(3)]
        try:
            await asyncio.sleep(0.3)
            started = time.monotonic()
            result = await ingest.storescu(path, args=("+tla", "+cf", str(pki / "ca.crt")))
            assert result.returncode == 0, result.stderr
            assert time.monotonic() - started < 10
        finally:
            for sock in silent:
                sock.close()
