"""The DICOM SCP (pynetdicom): AE set-up from settings, optional TLS, handler binding."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, cast

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
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
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid, uid_to_service_class
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from xrayvision.config import Settings
from xrayvision.dicom import handlers
from xrayvision.dicom.handlers import IngestContext
from xrayvision.dicom.ingest import storage_classes
from xrayvision.dicom.staging import Staging
from xrayvision.dicom.transport import BufferedRequestHandler

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,  # pydicom decodes them with pylibjpeg-openjpeg
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


class IngestAE(AE):
    """pynetdicom's AE, whose association limit counts only peers that asked for an
    association.

    pynetdicom counts every acceptor thread, and one starts per TCP connection: peers
    that connect and send nothing, or part of a PDU, would hold every slot until their
    ARTIM/read timeout and lock real senders out ("local limit exceeded"). A connection
    counts from its A-ASSOCIATE-RQ on (the one being negotiated included); the silent
    ones are bounded by ``[dicom] read_timeout`` instead.
    """

    @property
    def active_associations(self):
        return [assoc for assoc in super().active_associations
                if not assoc.is_acceptor or assoc.requestor.primitive is not None]


class IngestServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with connection hygiene:

    - the kernel queues :attr:`request_queue_size` connections not accepted yet
      (socketserver's default is 5);
    - every accepted connection reads with a timeout of :attr:`read_timeout` seconds: a
      peer silent in the middle of a PDU (or of its TLS handshake) is dropped;
    - the TLS handshake runs in the connection's own thread, not in the one accepting
      connections (pynetdicom's), where one silent peer held up every other sender.
    """

    request_queue_size = 128
    read_timeout: float | None = 30.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = cast(socket.socket, self.socket).accept()
        client.settimeout(self.read_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                log.info("TLS handshake failed", extra={"error": str(exc)[:200]})
                return  # socketserver closes the connection
        super().finish_request(request, client_address)


def register_storage_class(uid: str) -> None:
    """Makes pynetdicom serve C-STOREs of ``uid`` (an ``[dicom] extra_sop_classes`` entry)
    with its storage service: it maps only the storage classes it knows, and aborts the
    association on a C-STORE of any other, retired ones included (Ultrasound Image
    Storage 1.2.840.10008.5.1.4.1.1.6, still sent by old machines). Idempotent."""
    if uid_to_service_class(uid) is not StorageServiceClass:
        register_uid(uid, "XRayVisionStorage_" + uid.replace(".", "_"), StorageServiceClass)


def make_ae(settings: Settings) -> AE:
    d = settings.dicom
    ae = IngestAE(ae_title=d.ae_title)
    ae.maximum_associations = d.max_associations
    ae.maximum_pdu_size = d.max_pdu
    ae.require_called_aet = d.require_called_aet
    ae.require_calling_aet = list(d.allowed_calling_aets)
    ae.network_timeout = d.idle_timeout
    ae.dimse_timeout = 60
    # ARTIM: how long a connection may wait before its A-ASSOCIATE-RQ (and the acceptor
    # thread, holding an association slot, for a connection dropped before one)
    ae.acse_timeout = min(30.0, d.read_timeout)
    for sop_class in storage_classes(settings):
        register_storage_class(sop_class)
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def start_scp(settings: Settings, ctx: IngestContext,
              staging: Staging | None = None) -> ThreadedAssociationServer:
    """Starts listening (non-blocking); stop it with ``server.shutdown()``. Received
    data sets are written into ``staging`` (else the temporary folder)."""
    # Received datasets are streamed to a temporary file as they arrive, and that file is
    # moved into the store: a large X-ray is never held in memory, nor copied twice.
    # (A pynetdicom process-wide setting; this process is the one that receives.)
    _config.STORE_RECV_CHUNKED_DATASET = True
    if staging is not None:
        staging.install()
    ae = make_ae(settings)
    bound: list[Any] = [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [ctx]),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
        (evt.EVT_ABORTED, handlers.handle_aborted),
        (evt.EVT_CONN_CLOSE, handlers.handle_closed),
        (evt.EVT_REJECTED, handlers.handle_rejected, [ctx]),
    ]
    server_class = type("Server", (IngestServer,), {
        "request_queue_size": settings.dicom.listen_backlog,
        "read_timeout": settings.dicom.read_timeout})
    handler = BufferedRequestHandler if settings.dicom.fast_receive else RequestHandler
    server = ae.make_server((settings.dicom.host, settings.dicom.port), evt_handlers=bound,
                            ssl_context=tls_context(settings), server_class=server_class,
                            request_handler=handler)
    # What ae.start_server(block=False) does, with our request handler
    # (server.shutdown() takes the server off the AE's list again).
    threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True).start()
    ae._servers.append(server)
    return server
