"""The DICOM SCP (pynetdicom): AE set-up from settings, optional TLS, handler binding."""

from __future__ import annotations

import ssl
import threading

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from xrayvision.config import Settings
from xrayvision.dicom import handlers
from xrayvision.dicom.handlers import IngestContext
from xrayvision.dicom.ingest import storage_classes

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]


class TLSConfigError(ValueError):
    """The DICOM TLS settings are incomplete or their files unreadable."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server TLS context from [dicom] tls_cert/tls_key (and tls_ca to require client
    certificates); None when TLS is off."""
    d = settings.dicom
    if d.tls_cert is None and d.tls_key is None:
        if d.tls_ca is not None:
            raise TLSConfigError("[dicom] tls_ca needs tls_cert and tls_key")
        return None
    if d.tls_cert is None or d.tls_key is None:
        raise TLSConfigError("[dicom] TLS needs both tls_cert and tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(d.tls_cert, d.tls_key)
        if d.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(d.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"[dicom] TLS files unusable: {exc}") from None
    return context


def make_ae(settings: Settings) -> AE:
    d = settings.dicom
    ae = AE(ae_title=d.ae_title)
    ae.maximum_associations = d.max_associations
    ae.maximum_pdu_size = d.max_pdu
    ae.require_called_aet = d.require_called_aet
    ae.require_calling_aet = list(d.allowed_calling_aets)
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    for sop_class in storage_classes(settings):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


class BufferedAssociationSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU with as few system calls as the network allows.

    The base class reads in 4 KiB ``recv`` calls appended to a growing bytearray: an 18 MB
    X-ray is about 4,500 calls and copies. Sampled with py-spy while 40 such X-rays
    arrived, that loop was 193 of the receiving thread's 463 busy samples; reading into
    one buffer, 96 of 483. Here each call fills what is left of that buffer.
    The buffer is allocated for at most :data:`PREALLOCATE` bytes and grows only as data
    arrives, so a length announced by a peer costs no memory the peer has not sent. Same
    contract as the base class: fewer bytes only when the peer closed the connection.
    """

    PREALLOCATE = 1 << 20

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        buffer = bytearray(min(nr_bytes, self.PREALLOCATE))
        received = 0
        while received < nr_bytes:
            if received == len(buffer):  # full: double it, never past what was announced
                buffer += bytes(min(len(buffer), nr_bytes - received))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[received:])
            if not count:
                del buffer[received:]
                break
            received += count
        return buffer


class BufferedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with :class:`BufferedAssociationSocket`."""

    def _create_association(self):
        assoc = super()._create_association()
        # The base class builds the socket wrapper (which queues the connection event,
        # so it cannot be built twice); the subclass only replaces ``recv`` and adds no
        # state, so the instance changes class in place.
        assoc.dul.socket.__class__ = BufferedAssociationSocket
        return assoc


def start_scp(settings: Settings, ctx: IngestContext) -> ThreadedAssociationServer:
    """Starts listening (non-blocking); stop it with ``server.shutdown()``."""
    # Received datasets are streamed to a temporary file as they arrive, and that file is
    # moved into the store: a large X-ray is never held in memory, nor copied twice.
    # (A pynetdicom process-wide setting; this process is the one that receives.)
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = make_ae(settings)
    bound = [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [ctx]),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
        (evt.EVT_ABORTED, handlers.handle_aborted),
        (evt.EVT_REJECTED, handlers.handle_rejected, [ctx]),
    ]
    server = ae.make_server((settings.dicom.host, settings.dicom.port), evt_handlers=bound,
                            ssl_context=tls_context(settings),
                            server_class=ThreadedAssociationServer,
                            request_handler=BufferedRequestHandler)
    # What ae.start_server(block=False) does, with our request handler
    # (server.shutdown() takes the server off the AE's list again).
    threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True).start()
    ae._servers.append(server)
    return server
