"""The SCP's receive path: pynetdicom's socket and DUL, doing less work per PDU.

pynetdicom reads a PDU in 4 KiB ``recv`` calls, appends them to a header bytearray,
copies that into ``bytes``, slices the P-DATA-TF body off, slices each PDV's value off,
and the DIMSE layer slices the control byte off before writing the fragment to the
streamed file: seven copies of an 18 MB X-ray, and for each of its ~140 PDUs a round of
the reactor (``select``, two queues, the state machine, an event). Here:

- a PDU is read into one buffer and a P-DATA-TF's values are ``memoryview`` slices of it;
- the middle fragments of a C-STORE data set being streamed to its file are read in
  blocks of up to 1 MiB, several PDUs per ``recv``, and written there with one
  ``writev`` per block (:class:`BufferedDUL`), so an instance costs two copies (socket
  to buffer, buffer to file), few system calls and little Python;
- the file's write-back to disk starts as it arrives, so the fsync before the response
  has little left to wait for;
- the two reactors (the DUL's, the association's) wait for each other's news instead
  of sleeping 1 ms per idle round: the peer's next request is read as it arrives, a
  received instance reaches its handler as soon as it is decoded, its response is sent
  as soon as it is queued, and an idle association costs almost no CPU.

Measured with ``bench/ingest.py`` ("cpu ms" of a pynetdicom process receiving 40 raw
X-rays and recording nothing): about 45 ms of CPU per instance with pynetdicom's own
path, about 18 with this one (bench/README.md, "Ingest").

The classes keep pynetdicom's contracts (its events, its error handling) and are put
in place by :class:`BufferedRequestHandler` after pynetdicom builds its own objects
(:class:`BufferedAssociation` repeats pynetdicom's reactor loop, all but its wait).
Only associations our server accepts use them; the associations we request (query and
retrieve) stay pynetdicom's. ``[dicom] fast_receive = false`` turns them off (pynetdicom's
own path: slower, and without the PDU size limits below).

They rely on pynetdicom 3.0.4 (``pyproject.toml`` allows 3.0.x only): a copy of
``Association._run_reactor``; overrides of ``DULServiceProvider._read_pdu_data``,
``_decode_pdu``, ``_is_transport_event``, ``stop_dul``; the classes of what
``RequestHandler._create_association`` builds; and these private members:
``Association._is_paused``, ``_reactor_checkpoint``, ``_kill``, ``_serve_request``
(extended: a C-STORE of a garbled SOP class is refused alone), ``_accepted_cx``;
``DULServiceProvider._recv_pdu``, ``_run_loop_delay``, ``_idle_timer``;
``AssociationSocket._is_connected``; the DIMSE message's ``_data_set_file``.
tests/dicom/test_transport_upstream.py fails with "re-sync dicom/transport.py" when
any of them changes upstream; tests/dicom/test_transport.py checks the behaviour against
pynetdicom's own DUL.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from socket import socket as SocketType
from typing import cast

from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket, RequestHandler

log = logging.getLogger(__name__)
PYNETDICOM_LOG = logging.getLogger("pynetdicom.association")  # BufferedAssociation's

PDU_TYPES = frozenset(range(0x01, 0x08))
P_DATA_TF_TYPE = 0x04
# Bodies of PDUs other than P-DATA-TF (an A-ASSOCIATE-RQ proposing every storage class is
# under 64 KiB), and of a P-DATA-TF when we announced no maximum length: larger ones abort
# the association before anything is buffered, so no peer makes us hold what it announces.
CONTROL_PDU_LIMIT = 256 * 1024
UNLIMITED_PDU_CAP = 64 * 1024 * 1024
A_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])
# Set on a C-STORE request served under its context's SOP class: the class it named.
GARBLED_SOP_CLASS = "xrayvision_garbled_sop_class"


def _sync_file_range():
    """Linux's sync_file_range(2) from the C library, else None (other systems)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing a range of a file to disk (``length`` 0: to its
    end), without waiting (a no-op where the system has no sync_file_range). An
    optimisation only: errors are ignored, durability stays with the fsync that follows."""
    if SYNC_FILE_RANGE is not None:
        SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def middle_fragment_length(header) -> int:
    """From a PDU's first 12 bytes: the length of the data set fragment it holds when it
    is a P-DATA-TF whose one PDV fills it with a data set fragment that is not the last;
    else 0 (also for fewer than 12 bytes)."""
    if len(header) < 12 or header[0] != P_DATA_TF_TYPE:
        return 0
    _, _, pdu_length, item_length, _, control = struct.unpack_from(">BBLLBB", header)
    if pdu_length <= 6 or item_length != pdu_length - 4 or control & 0b11:
        return 0
    return item_length - 2


class StreamWriteError(Exception):
    """The streamed data set's file could not be written (its OSError is the cause).
    Not an OSError, so that it is not taken for a lost connection: like a failed write
    in pynetdicom's own path, it reaches the reactor, which aborts the association."""


class BufferedAssociationSocket(AssociationSocket):
    """pynetdicom's socket, reading with as few system calls as the network allows.

    The buffer is allocated for at most :data:`PREALLOCATE` bytes and grows only as data
    arrives, so a length announced by a peer costs no memory the peer has not sent. Same
    contract as the base class: fewer bytes only when the peer closed the connection.
    Bytes read ahead and given back with :meth:`unread` come first.
    """

    PREALLOCATE = 1 << 20
    _ahead = memoryview(b"")  # read from the network ahead of need, handed out first

    def recv(self, nr_bytes: int) -> bytearray:
        return self.recv_after(b"", nr_bytes)

    def recv_after(self, prefix: bytes | bytearray, nr_bytes: int) -> bytearray:
        """``prefix`` followed by the next ``nr_bytes`` from the peer, in one buffer
        (fewer only when the peer closed the connection)."""
        total = len(prefix) + nr_bytes
        buffer = bytearray(min(total, len(prefix) + len(self._ahead) + self.PREALLOCATE))
        buffer[:len(prefix)] = prefix
        received = len(prefix)
        while received < total:
            if received == len(buffer):  # full: double it, never past what was announced
                buffer += bytes(min(len(buffer), total - received))
            with memoryview(buffer) as view:
                count = self.recv_into(view[received:total])
            if not count:
                del buffer[received:]
                break
            received += count
        return buffer

    def recv_into(self, view: memoryview) -> int:
        """Reads into ``view`` what has arrived, at least one byte (blocking), 0 when
        the peer closed the connection."""
        if self._ahead:
            count = min(len(view), len(self._ahead))
            view[:count] = self._ahead[:count]
            self._ahead = self._ahead[count:]
            return count
        return cast(socket.socket, self.socket).recv_into(view)

    def unread(self, data) -> None:
        """Gives back ``data`` (read ahead of need): the next reads return it first."""
        self._ahead = memoryview(bytes(data) + bytes(self._ahead))

    @property
    def ready(self) -> bool:
        return bool(self._ahead) or super().ready

    def wait_readable(self, timeout: float, waker: socket.socket | None = None) -> None:
        """Returns once data has arrived (or the peer closed the connection), or
        ``waker`` became readable (it is then drained), else after ``timeout`` seconds;
        with no connection, after ``timeout`` seconds (the caller polls in a loop).
        Errors are left to :attr:`ready`, which reports them."""
        sock = self.socket
        if self._ahead or isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            if sock is None or not self._is_connected:
                raise ValueError("no connection")
            readable, _, _ = select.select([sock] if waker is None else [sock, waker],
                                           [], [], timeout)
        except (OSError, ValueError):
            time.sleep(timeout)
            return
        if waker is not None and waker in readable:
            with contextlib.suppress(OSError):
                waker.recv(4096)


class BufferedDUL(DULServiceProvider):
    """pynetdicom's DUL, reading each PDU into one buffer and decoding P-DATA-TF PDUs
    without copying their values (the PDVs are ``memoryview`` slices of that buffer).

    While a C-STORE data set streams into its file (``STORE_RECV_CHUNKED_DATASET``), a
    P-DATA-TF that holds one middle fragment of it (most of an X-ray: 128 KiB PDUs from
    DCMTK, 140 for 18 MB) is written to that file as it is read, which is all pynetdicom
    would do with it; so are the ones that follow it as far as they have arrived: the
    socket is read in blocks of up to :data:`FRAGMENT_BUFFER` bytes, and what is left
    past the last such fragment is given back to it (``unread``). That skips, per PDU,
    the reactor's round (``select``, two queues, the state machine: Sta6 stays Sta6 on
    Evt10) and the EVT_PDU_RECV event, so only while no handler but pynetdicom's own
    logging one is bound to it. The first and last fragments and everything else take
    pynetdicom's path.

    Event codes as the base class: Evt17 when the connection closes mid-PDU, Evt19 for
    an unknown PDU type or one that cannot be decoded.
    """

    socket: BufferedAssociationSocket

    FRAGMENT_BUFFER = 1 << 20
    MAX_WRITES = 256  # buffers per writev, well under IOV_MAX (1024 on Linux)
    # Longest wait for the socket in a reactor round with nothing to do: what else the
    # round looks after (the ARTIM timer) has seconds to spare, and a primitive queued
    # to send, or a kill, wakes the wait at once (send_pdu, kill_dul).
    IDLE_WAIT = 0.02
    POLL_WAIT = 0.001  # pynetdicom's run-loop delay: the wait when nothing can wake it
    # The received instance's file is fsynced before its response: written back only
    # then, an 18 MB X-ray kept the response waiting ~13 ms, a 6 MB JPEG-lossless one
    # ~3; started every MiB as it arrives, ~1 (bench/README.md, "Ingest").
    WRITEBACK_EVERY = 1 << 20
    # Per association, set on first use (the class is put in place on a built instance).
    _fragment_buffer: bytearray | None = None
    _unsynced = 0  # bytes written to streamed files since a write-back was last started
    # Set up while the thread runs: a socket pair whose far end is written to wake the
    # reactor while it waits (only then: _waiting), and the lock that keeps it from
    # being written to once closed.
    _waker: tuple[SocketType, SocketType] | None = None
    _waker_lock: threading.Lock | None = None
    _waiting = False

    def run(self) -> None:
        # The thread's target is pynetdicom's run_reactor, bound before the class was
        # changed; run() is looked up when the thread starts.
        self._open_waker()
        try:
            super().run()
        finally:
            self._close_waker()

    def _open_waker(self) -> None:
        self._waker_lock = threading.Lock()
        try:
            self._waker = socket.socketpair()
        except OSError as exc:  # out of descriptors: poll as pynetdicom does
            log.warning("association runs without its wake-up socket: %s", exc)
            return
        for end in self._waker:
            end.setblocking(False)

    def _close_waker(self) -> None:
        self._waiting = False
        with self._waker_lock or contextlib.nullcontext():
            for end in self._waker or ():
                end.close()
            self._waker = None

    def send_pdu(self, primitive) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        # pynetdicom's spins (sleeping _run_loop_delay, 0 here) until the thread ends.
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def _wake(self) -> None:
        """Ends the reactor's wait for the socket, if it is waiting (any thread)."""
        if self._waiting and self._waker_lock is not None:
            with self._waker_lock:
                if self._waker is not None:
                    with contextlib.suppress(OSError):  # full: it is woken already
                        self._waker[1].send(b"\0")

    def _is_transport_event(self) -> bool:
        # pynetdicom's reactor sleeps 1 ms whenever a round found nothing to do, also
        # when the peer's next request arrives meanwhile, and picks up what our side
        # queues to send only on its next round; with no delay set (see
        # BufferedRequestHandler), the round waits here instead for the socket or a
        # wake-up, and reads the request, or sends the response, as soon as it can.
        if self._nothing_queued():
            self._waiting = True
            try:
                if self._nothing_queued():  # again: a send_pdu before _waiting was set
                    waker = self._waker
                    if waker is None:
                        self.socket.wait_readable(self.POLL_WAIT)
                    else:
                        self.socket.wait_readable(self.IDLE_WAIT, waker[0])
            finally:
                self._waiting = False
        return super()._is_transport_event()

    def _nothing_queued(self) -> bool:
        return self.event_queue.empty() and not self.to_provider_queue.queue

    def _read_pdu_data(self) -> None:
        while self._read_one_pdu() and self.socket.ready:
            pass

    def _read_one_pdu(self) -> bool:
        """Reads one PDU. Returns True when it was a fragment written to its file (the
        caller may read on), False when it went to the event queue or failed."""
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            log.error("Connection lost before a PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return False
        if len(header) < 6:  # the peer closed the connection
            self.event_queue.put("Evt17")
            return False
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPES:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")
            return False
        limit = self._pdu_limit(pdu_type)
        if pdu_length > limit:  # refused before a byte of it is buffered
            log.error("PDU of type 0x%02X announces %d bytes, over the limit of %d; "
                      "aborting the association", pdu_type, pdu_length, limit)
            self._refuse()
            return False
        try:
            stream = (self._streaming_file() if pdu_type == P_DATA_TF_TYPE and pdu_length > 6
                      else None)
            if stream is not None:
                header = self.socket.recv_after(header, 6)  # and the first PDV's header
                length = middle_fragment_length(header)
                if length:
                    return self._stream_fragments(stream, length)
            pdu_bytes = self.socket.recv_after(header, 6 + pdu_length - len(header))
        except (OSError, TimeoutError) as exc:
            log.error("Connection lost before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return False
        if len(pdu_bytes) != 6 + pdu_length:
            log.error("The received PDU is shorter than expected (%d of %d bytes received)",
                      len(pdu_bytes), 6 + pdu_length)
            self.event_queue.put("Evt17")
            return False
        try:
            pdu, event = self._decode_pdu(pdu_bytes)
        except Exception:  # noqa: BLE001 - as the base class: any decoding failure is Evt19
            log.exception("Unable to decode the received PDU data")
            self.event_queue.put("Evt19")
            return False
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return False

    def _refuse(self) -> None:
        """A-ABORT (service provider: invalid PDU parameter value) and the connection
        closed at once (Evt17): nothing more is read from this peer, and it does not keep
        the connection for the ARTIM time an ordinary abort allows it."""
        with contextlib.suppress(Exception):
            self.socket.send(A_ABORT_INVALID_PDU)
        self.socket.close()

    def _pdu_limit(self, pdu_type: int) -> int:
        """The largest PDU body accepted now: a P-DATA-TF once the association is
        established, up to the maximum length we announced (or :data:`UNLIMITED_PDU_CAP`
        when we announced none); anything else (association set-up, release, abort), a
        few KiB in practice, up to :data:`CONTROL_PDU_LIMIT`."""
        if pdu_type != P_DATA_TF_TYPE or self.state_machine.current_state in (
                "Sta1", "Sta2", "Sta3", "Sta4", "Sta5"):
            return CONTROL_PDU_LIMIT
        local = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
        return local.maximum_length or UNLIMITED_PDU_CAP

    def _streaming_file(self):
        """The file pynetdicom streams the C-STORE data set being received into, when a
        P-DATA-TF may skip the reactor: the association established, every PDU read
        before this one processed, no EVT_PDU_RECV or EVT_DATA_RECV handler of the
        user's. Else None."""
        if (self.state_machine.current_state != "Sta6" or not self.event_queue.empty()
                or not self._recv_pdu.empty()
                or self.assoc.get_handlers(evt.EVT_DATA_RECV)
                or any(handler is not standard_pdu_recv_handler
                       for handler, _ in self.assoc.get_handlers(evt.EVT_PDU_RECV))):
            return None
        stream = getattr(self.assoc.dimse.message, "_data_set_file", None)
        return None if stream is None or stream.closed else stream

    def _stream_fragments(self, stream, length: int) -> bool:
        """Writes the next ``length`` bytes from the peer (a data set fragment) to
        ``stream``, then each P-DATA-TF holding a middle fragment of it that has arrived
        meanwhile (read with it, so most PDUs cost no system call of their own), with
        one ``writev`` per buffer filled. Bytes read past the last such fragment are
        given back to the socket. False when the connection closed (Evt17)."""
        if self._fragment_buffer is None:
            self._fragment_buffer = bytearray(self.FRAGMENT_BUFFER)
        try:
            stream.flush()  # what pynetdicom wrote to it is still ahead of ours
            fd = stream.fileno()
        except OSError as exc:
            raise StreamWriteError from exc
        pending: list[memoryview] = []  # views of the buffer, written before it is refilled
        start = end = 0
        with memoryview(self._fragment_buffer) as view:
            while length:
                while length:
                    if start == end:
                        self._write(stream, fd, pending)
                        start, end = 0, self.socket.recv_into(view)
                        if not end:
                            log.error("Connection closed in the middle of a PDU")
                            self.event_queue.put("Evt17")
                            return False
                    take = min(length, end - start)
                    pending.append(view[start:start + take])
                    start, length = start + take, length - take
                    if len(pending) == self.MAX_WRITES:
                        self._write(stream, fd, pending)
                length = self._next_fragment(view[start:end], stream)
                if length:
                    start += 12
            self._write(stream, fd, pending)
            if start < end:
                self.socket.unread(view[start:end])
        self._idle_timer.restart()
        return True

    def _next_fragment(self, data: memoryview, stream) -> int:
        """The length of the data set fragment in the PDU that ``data`` starts with,
        when the whole PDU header is there and the PDU holds one middle fragment of the
        data set streaming into ``stream`` (and may still skip the reactor); else 0."""
        length = middle_fragment_length(data)
        return length if length and self._streaming_file() is stream else 0

    def _write(self, stream, fd: int, pending: list[memoryview]) -> None:
        """Writes ``pending`` to ``fd``, ``stream``'s descriptor (and empties it); starts
        the file's write-back every :data:`WRITEBACK_EVERY` bytes. A failed write is
        handed to the stream when it takes it (``dicom.staging.StagedFile.fail``: the
        rest of the data set is then read and dropped), else raised."""
        if getattr(stream, "failed", None) is not None:
            pending.clear()
            return
        total = sum(map(len, pending))
        while pending:
            try:
                written = os.writev(fd, pending)
            except OSError as exc:
                if not hasattr(stream, "fail"):
                    raise StreamWriteError from exc
                stream.fail(exc)
                pending.clear()
                return
            while pending and written >= len(pending[0]):
                written -= len(pending.pop(0))
            if written:
                pending[0] = pending[0][written:]
        self._unsynced += total
        if self._unsynced >= self.WRITEBACK_EVERY:
            start_writeback(fd, 0, 0)  # the whole file: pages under write-back are skipped
            self._unsynced = 0

    def _decode_pdu(self, bytestream: bytearray):
        if bytestream[0] != P_DATA_TF_TYPE:  # association set-up and release: small
            return super()._decode_pdu(bytestream)
        if self.assoc.get_handlers(evt.EVT_DATA_RECV):  # its contract gives bytes
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": bytes(bytestream)})
        pdu = P_DATA_TF()
        pdu.decode(cast(bytes, memoryview(bytestream)))  # any buffer: no copy
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt10"


class WakingQueue(queue.Queue):
    """A queue that sets ``wake`` whenever something is put in it."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self.wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.wake.set()


class BufferedAssociation(Association):
    """pynetdicom's association (as acceptor), whose reactor waits for its DUL's news
    instead of sleeping 1 ms per round: a DIMSE message completed, or a release or
    abort from the peer, each put in a :class:`WakingQueue` that sets :attr:`_wake`.
    A received C-STORE so reaches its handler as soon as its last PDU is decoded, and
    the association thread does not take the GIL 1000 times a second from the thread
    receiving the next instance. What the reactor also watches (a kill, the DUL
    stopping, the network timeout) is looked at within :data:`REACTOR_WAIT`."""

    REACTOR_WAIT = 0.01
    _wake: threading.Event  # set by BufferedRequestHandler

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4's Association._run_reactor (MIT licence), but for the wait at
        # the start of each round; keep it in step with the pinned version.
        self._is_paused = False
        while not self._kill:
            if self.dimse.msg_queue.empty():
                self._wake.wait(self.REACTOR_WAIT)
            self._wake.clear()  # what it was set for is looked at below, in this round

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                PYNETDICOM_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                PYNETDICOM_LOG.info(log_msg)
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                PYNETDICOM_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def _serve_request(self, msg: object, context_id: int) -> None:
        """A C-STORE whose Affected SOP Class UID is no storage class (a sender garbled
        it: ``dcmsend`` with a data set of VR UN elements sends what it reads there) is
        served under its presentation context's class, so that our C-STORE handler
        refuses that instance alone (:data:`GARBLED_SOP_CLASS` says what came); pynetdicom
        would abort the association, and with it every instance the sender had queued."""
        if isinstance(msg, C_STORE) and msg.AffectedSOPClassUID is not None:
            context = self._accepted_cx.get(context_id)
            requested = str(msg.AffectedSOPClassUID)
            if context is not None and requested != context.abstract_syntax and (
                    uid_to_service_class(requested) is not StorageServiceClass):
                setattr(msg, GARBLED_SOP_CLASS, requested)
                msg.AffectedSOPClassUID = context.abstract_syntax
        super()._serve_request(msg, context_id)  # type: ignore[arg-type]


class BufferedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with :class:`BufferedAssociation`,
    :class:`BufferedAssociationSocket` and :class:`BufferedDUL`."""

    def _create_association(self):
        assoc = super()._create_association()
        # The base class builds the DUL and its socket (the socket queues the connection
        # event, so it cannot be built twice); the subclasses override methods, and what
        # state they add starts from class attributes, so the instances change class in
        # place before the DUL starts.
        assoc.__class__ = BufferedAssociation
        assoc._wake = threading.Event()
        assoc.dimse.msg_queue = WakingQueue(assoc._wake)  # both empty: nothing ran yet
        assoc.dul.to_user_queue = WakingQueue(assoc._wake)
        assoc.dul.__class__ = BufferedDUL
        assoc.dul.socket.__class__ = BufferedAssociationSocket
        assoc.dul._run_loop_delay = 0  # BufferedDUL waits for the socket instead
        return assoc
