"""The fence around ``dicom/transport.py`` (and ``scp``, ``staging``, ``handlers``): they
copy or rely on pynetdicom internals of the version they were checked against. When
pynetdicom changes any of that code, or drops a private member we use, this test fails
and says what to re-sync; until then, ``[dicom] fast_receive = false`` runs pynetdicom's
own receive path."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import io

import pynetdicom
import pytest
from pydicom import dcmread

from support.xrays import make_xray, write
from xrayvision.dicom.transport import BufferedDUL

from .conftest import ingest_settings, running_ingest

VERIFIED_VERSION = "3.0.4"
# The upstream code each piece copies, overrides or depends on (sha256 of its source).
UPSTREAM = {
    # BufferedAssociation._run_reactor is a copy of it
    "pynetdicom.association.Association._run_reactor": "f28838c5559e462a",
    # BufferedDUL overrides these, keeping their contracts
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "pynetdicom.dul.DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "pynetdicom.dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "pynetdicom.dul.DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    # BufferedRequestHandler changes the classes of what this builds
    "pynetdicom.transport.RequestHandler._create_association": "05c8d12b79863cdb",
    # BufferedAssociationSocket keeps this contract
    "pynetdicom.transport.AssociationSocket.recv": "6bc20a33b1b7cfe7",
    "pynetdicom.transport.AssociationSocket.ready": "3eb58e3d39dc076d",
    # IngestAE.active_associations: the association limit is counted here; and
    # handlers.rejection_reason repeats its order of refusals (the event carries none)
    "pynetdicom.acse.ACSE._negotiate_as_acceptor": "fffd360957c42a8e",
    # Staging replaces the NamedTemporaryFile this creates the received file with
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": "f51c777e841a76be",
}
# Private members used (module: names that must appear in its source).
PRIVATE = {
    "pynetdicom.association": ["self._is_paused", "self._reactor_checkpoint", "self._kill",
                               "def _serve_request", "self.network_timeout_response"],
    "pynetdicom.dul": ["self._recv_pdu", "self._run_loop_delay", "self._idle_timer",
                       "self.event_queue", "self.to_provider_queue", "self.to_user_queue"],
    "pynetdicom.transport": ["self._is_connected", "def _create_association"],
    "pynetdicom.ae": ["self._servers"],
    "pynetdicom.dimse": ["self.msg_queue", "self.message._data_set_file"],
    "pynetdicom.dimse_messages": ["from tempfile import NamedTemporaryFile",
                                  "self._data_set_file", "primitive._dataset_file"],
    "pynetdicom._handlers": ["def standard_pdu_recv_handler"],
}


def _resolve(dotted: str):
    module_name, _, rest = dotted.partition(".")
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj.fget if isinstance(obj, property) else obj
    raise AssertionError(f"cannot resolve {dotted} ({module_name}{rest})")


def test_the_pynetdicom_installed_is_the_verified_one():
    assert pynetdicom.__version__ == VERIFIED_VERSION, (
        f"pynetdicom {pynetdicom.__version__} installed, the receive path was verified "
        f"against {VERIFIED_VERSION}: re-sync dicom/transport.py (this file lists what)")


@pytest.mark.parametrize("dotted", sorted(UPSTREAM))
def test_upstream_code_is_unchanged(dotted):
    digest = hashlib.sha256(inspect.getsource(_resolve(dotted)).encode()).hexdigest()[:16]
    assert digest == UPSTREAM[dotted], (
        f"pynetdicom {pynetdicom.__version__} changed {dotted}: re-sync dicom/transport.py "
        "with it (or set [dicom] fast_receive = false meanwhile), then update the digest")


@pytest.mark.parametrize("module", sorted(PRIVATE))
def test_private_members_used_still_exist(module):
    source = inspect.getsource(importlib.import_module(module))
    missing = [name for name in PRIVATE[module] if name not in source]
    assert not missing, (f"pynetdicom {pynetdicom.__version__} no longer has {missing} in "
                         f"{module}: re-sync dicom/transport.py")


async def test_fast_receive_off_runs_pynetdicoms_own_path(tmp_path, sqlite_db, monkeypatch):
    used = []
    original = BufferedDUL._read_pdu_data
    monkeypatch.setattr(BufferedDUL, "_read_pdu_data",
                        lambda self: used.append(1) or original(self))
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_FAST_RECEIVE="false",
                               XRAYVISION_DICOM_KEEP_DICOM="true")
    sent = make_xray(rows=1500, cols=1200, bits=16, seed=8)
    path = write(sent, tmp_path / "big.dcm")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await ingest.storescu(path)
        assert result.returncode == 0, result.stderr
        assert (await ingest.converted())["queued"] == 1
        stored = await asyncio.to_thread(ingest.store.get, sent.SOPInstanceUID, "dcm")
        assert dcmread(io.BytesIO(stored)).PixelData == sent.PixelData
    assert not used  # not a byte through our receive path
