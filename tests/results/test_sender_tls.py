"""The SR over DICOM TLS (as the SCP's: TLS 1.2+, the PACS verified by our CA setting, our
client certificate when it asks), to DCMTK's storescp with TLS as the PACS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from support.pacs import wait_port
from support.pgserver import free_port
from xrayvision.config import load_settings
from xrayvision.db.models import PENDING, SENT, ResultOutbox
from xrayvision.results.sender import ResultsConfigError, ResultSender

from .conftest import record_read


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, the PACS's certificate for 127.0.0.1 and ours; another CA nobody uses."""
    d = tmp_path_factory.mktemp("pki")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=Test {ca}", cwd=d)
    for name in ("pacs", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext",
                cwd=d)
    return d


@pytest.fixture
def tls_pacs(tmp_path, pki):
    """storescp with TLS, requiring a client certificate from the CA."""
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "--aetitle", "PACS", "--output-directory", str(out),
         "+tls", str(pki / "pacs.key"), str(pki / "pacs.crt"), "+cf", str(pki / "ca.crt"),
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"})
    wait_port(port)
    yield port, out
    proc.terminate()
    proc.wait(10)


def sender(db, tmp_path, port: int, **tls: Path) -> ResultSender:
    env = {"XRAYVISION_RESULTS_DICOM_DESTINATION": f"PACS@127.0.0.1:{port}",
           "XRAYVISION_RESULTS_WORKERS": "0", "XRAYVISION_RESULTS_TIMEOUT": "5",
           **{f"XRAYVISION_RESULTS_DICOM_TLS_{k.upper()}": str(v) for k, v in tls.items()}}
    return ResultSender(load_settings(tmp_path / "cfg", env=env), db, "tls-test")


def outbox(db) -> list[ResultOutbox]:
    return db.read_sync(lambda s: list(s.scalars(select(ResultOutbox))))


async def test_the_sr_over_tls_with_our_certificate(sqlite_db, tmp_path, pki, tls_pacs):
    port, received = tls_pacs
    record_read(sqlite_db, ("dicom",))
    sent = sender(sqlite_db, tmp_path, port, ca=pki / "ca.crt", cert=pki / "client.crt",
                  key=pki / "client.key")
    assert await sent.send_due() == 1
    [row] = outbox(sqlite_db)
    assert row.status == SENT, row.error
    # (storescp writes each instance before it answers the C-STORE)
    assert sorted(p.name[:2] for p in received.iterdir()) == ["SR", "SR"]


async def test_a_pacs_we_do_not_trust_gets_nothing(sqlite_db, tmp_path, pki, tls_pacs):
    port, received = tls_pacs
    record_read(sqlite_db, ("dicom",))
    untrusting = sender(sqlite_db, tmp_path, port, ca=pki / "other-ca.crt",
                        cert=pki / "client.crt", key=pki / "client.key")
    await untrusting.send_due()
    [row] = outbox(sqlite_db)
    assert row.status == PENDING and "no answer from PACS@127.0.0.1" in row.error
    assert list(received.iterdir()) == []


def test_incomplete_or_unusable_tls_settings_are_clear_errors(sqlite_db, tmp_path, pki):
    with pytest.raises(ResultsConfigError, match="go together"):
        sender(sqlite_db, tmp_path, 104, cert=pki / "client.crt")
    with pytest.raises(ResultsConfigError, match="unusable"):
        sender(sqlite_db, tmp_path, 104, ca=tmp_path / "missing.crt")
