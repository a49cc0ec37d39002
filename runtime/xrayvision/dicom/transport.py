"""The SCP's receive path: pynetdicom's socket and DUL, with fewer copies of each PDU.

pynetdicom reads a PDU in 4 KiB ``recv`` calls, appends them to a header bytearray,
copies that into ``bytes``, slices the P-DATA-TF body off, slices each PDV's value off,
and the DIMSE layer slices the control byte off before writing the fragment to the
streamed file: seven copies of an 18 MB X-ray, most of them in Python. Here a PDU is
read into one buffer (header and body) and a P-DATA-TF's values are ``memoryview``
slices of it, so an instance costs two copies, both in the kernel: socket to buffer,
buffer to file. (Sampled with py-spy while 40 raw X-rays of the benchmark set arrived
into a handler that records nothing: 48 ms of CPU per instance before, 32 after; see
bench/README.md "Ingest".)

The classes keep pynetdicom's contracts (its events, its error handling) and are put
in place by :class:`BufferedRequestHandler` after pynetdicom builds its own objects.
Only associations our server accepts use them; the associations we request (query and
retrieve) stay pynetdicom's.
"""

from __future__ import annotations

import logging
import struct

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket, RequestHandler

log = logging.getLogger(__name__)

PDU_TYPES = frozenset(range(0x01, 0x08))
P_DATA_TF_TYPE = 0x04


class BufferedAssociationSocket(AssociationSocket):
    """pynetdicom's socket, reading with as few system calls as the network allows.

    The buffer is allocated for at most :data:`PREALLOCATE` bytes and grows only as data
    arrives, so a length announced by a peer costs no memory the peer has not sent. Same
    contract as the base class: fewer bytes only when the peer closed the connection.
    """

    PREALLOCATE = 1 << 20

    def recv(self, nr_bytes: int) -> bytearray:
        return self.recv_after(b"", nr_bytes)

    def recv_after(self, prefix: bytes, nr_bytes: int) -> bytearray:
        """``prefix`` followed by the next ``nr_bytes`` from the peer, in one buffer
        (fewer only when the peer closed the connection)."""
        sock = self.socket
        received, total = len(prefix), len(prefix) + nr_bytes
        buffer = bytearray(min(total, received + self.PREALLOCATE))
        buffer[:received] = prefix
        while received < total:
            if received == len(buffer):  # full: double it, never past what was announced
                buffer += bytes(min(len(buffer), total - received))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[received:])
            if not count:
                del buffer[received:]
                break
            received += count
        return buffer


class BufferedDUL(DULServiceProvider):
    """pynetdicom's DUL, reading each PDU into one buffer and decoding P-DATA-TF PDUs
    without copying their values (the PDVs are ``memoryview`` slices of that buffer).

    Event codes as the base class: Evt17 when the connection closes mid-PDU, Evt19 for
    an unknown PDU type or one that cannot be decoded.
    """

    socket: BufferedAssociationSocket

    def _read_pdu_data(self) -> None:
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            log.error("Connection lost before a PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(header) < 6:  # the peer closed the connection
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPES:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            pdu_bytes = self.socket.recv_after(header, pdu_length)
        except (OSError, TimeoutError) as exc:
            log.error("Connection lost before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(pdu_bytes) != 6 + pdu_length:
            log.error("The received PDU is shorter than expected (%d of %d bytes received)",
                      len(pdu_bytes), 6 + pdu_length)
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(pdu_bytes)
        except Exception:  # noqa: BLE001 - as the base class: any decoding failure is Evt19
            log.exception("Unable to decode the received PDU data")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _decode_pdu(self, bytestream: bytearray):
        if bytestream[0] != P_DATA_TF_TYPE:  # association set-up and release: small
            return super()._decode_pdu(bytestream)
        if self.assoc.get_handlers(evt.EVT_DATA_RECV):  # its contract gives bytes
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": bytes(bytestream)})
        pdu = P_DATA_TF()
        pdu.decode(memoryview(bytestream))
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt10"


class BufferedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with :class:`BufferedAssociationSocket` and
    :class:`BufferedDUL`."""

    def _create_association(self):
        assoc = super()._create_association()
        # The base class builds the DUL and its socket (the socket queues the connection
        # event, so it cannot be built twice); the subclasses only override methods and
        # add no state, so the instances change class in place before the DUL starts.
        assoc.dul.__class__ = BufferedDUL
        assoc.dul.socket.__class__ = BufferedAssociationSocket
        return assoc
