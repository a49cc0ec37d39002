"""The SCP's receive path: whole PDUs with few system calls and no copies of P-DATA
values, under pynetdicom's contracts (checked against pynetdicom's own DUL)."""

import contextlib
import errno
import io
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

from support.xrays import make_xray, write
from xrayvision.dicom.scp import start_scp
from xrayvision.dicom.transport import (
    BufferedAssociation,
    BufferedAssociationSocket,
    BufferedDUL,
    StreamWriteError,
    middle_fragment_length,
)

from .conftest import count_streamed, ingest_settings, running_ingest

# --- the socket ------------------------------------------------------------------------


def buffered_pair():
    ours, peer = socket.socketpair()
    return BufferedAssociationSocket(Association(AE(), "acceptor"), client_socket=ours), peer


def test_recv_returns_exactly_the_bytes_asked_for_across_many_sends():
    sock, peer = buffered_pair()
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer
    sender = threading.Thread(target=lambda: [peer.sendall(payload[i:i + 1000])
                                              for i in range(0, len(payload), 1000)])
    sender.start()
    first = sock.recv(6)
    rest = sock.recv(len(payload) - 6)
    sender.join()
    assert isinstance(rest, bytearray)
    assert bytes(first + rest) == payload


def test_recv_after_puts_the_prefix_and_the_data_in_one_buffer():
    sock, peer = buffered_pair()
    payload = bytes(range(256)) * 5000
    sender = threading.Thread(target=peer.sendall, args=(payload,))
    sender.start()
    got = sock.recv_after(b"head", len(payload))
    sender.join()
    assert isinstance(got, bytearray)
    assert bytes(got) == b"head" + payload


def test_unread_bytes_come_first_and_make_the_socket_ready():
    sock, peer = buffered_pair()
    assert not sock.ready
    sock.unread(memoryview(b"abcdef")[2:])
    assert sock.ready
    peer.sendall(b"ghij")
    assert bytes(sock.recv(3)) == b"cde"
    assert bytes(sock.recv_after(b"<", 5)) == b"<fghij"
    assert not sock.ready


def test_recv_returns_what_arrived_when_the_peer_closes():
    sock, peer = buffered_pair()
    peer.sendall(b"abc")
    peer.close()
    assert sock.recv(10) == bytearray(b"abc")
    assert sock.recv(10) == bytearray()
    assert sock.recv_after(b"xy", 10) == bytearray(b"xy")


def test_recv_grows_past_the_preallocation_only_as_data_arrives():
    sock, peer = buffered_pair()
    payload = bytes(range(256)) * 3 * (BufferedAssociationSocket.PREALLOCATE // 256) + b"tail"
    sender = threading.Thread(target=peer.sendall, args=(payload,))
    sender.start()
    assert bytes(sock.recv(len(payload))) == payload
    sender.join()
    # A peer announcing a 2 GiB PDU and sending 10 bytes costs no 2 GiB.
    peer.sendall(b"0123456789")
    peer.close()
    tracemalloc.start()
    try:
        assert sock.recv_after(b"header", 2**31) == bytearray(b"header0123456789")
        assert tracemalloc.get_traced_memory()[1] < 4 * BufferedAssociationSocket.PREALLOCATE
    finally:
        tracemalloc.stop()


# --- the DUL: one PDU read and decoded, as pynetdicom's own DUL does it -----------------


def dul_pair(dul_class):
    """A DUL of ``dul_class`` reading from one end of a socket pair (not started: the
    tests call its PDU reader directly); returns the DUL and the peer's end."""
    ours, peer = socket.socketpair()
    assoc = Association(AE(), "acceptor")
    assoc.acceptor.maximum_length = 0  # announced no maximum: large PDUs are the peer's right
    assoc.dul.__class__ = dul_class
    assoc.dul.socket = BufferedAssociationSocket(assoc, client_socket=ours)
    assert assoc.dul.event_queue.get_nowait() == "Evt5"  # the connection, queued by the socket
    return assoc.dul, peer


def read_one(dul_class, wire: bytes, close: bool = False):
    """What the DUL makes of ``wire``: its event code and the decoded PDU (or None)."""
    dul, peer = dul_pair(dul_class)
    peer.sendall(wire)
    if close:
        peer.close()
    dul._read_pdu_data()
    event = dul.event_queue.get_nowait()
    pdu = dul._recv_pdu.get_nowait() if not dul._recv_pdu.empty() else None
    return event, pdu


def p_data_tf(*values: tuple[int, bytes]) -> bytes:
    items = b"".join(struct.pack(">LB", len(value) + 1, context) + value
                     for context, value in values)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def pdv_list(pdu):
    return [(context, bytes(value))
            for context, value in pdu.to_primitive().presentation_data_value_list]


def test_p_data_values_are_views_of_one_received_buffer():
    values = [(1, b"\x02" + bytes(range(256)) * 600), (3, b"\x03command")]
    event, pdu = read_one(BufferedDUL, p_data_tf(*values))
    assert event == "Evt10"
    pdvs = [item.presentation_data_value for item in pdu.presentation_data_value_items]
    assert all(isinstance(value, memoryview) for value in pdvs)
    assert pdvs[0].obj is pdvs[1].obj  # both slices of the same buffer: nothing copied
    assert pdv_list(pdu) == values


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 255), st.binary(min_size=1, max_size=3000)),
                min_size=1, max_size=5))
def test_p_data_decodes_as_pynetdicom_decodes_it(values):
    ours, theirs = read_one(BufferedDUL, p_data_tf(*values)), \
        read_one(DULServiceProvider, p_data_tf(*values))
    assert ours[0] == theirs[0] == "Evt10"
    assert pdv_list(ours[1]) == pdv_list(theirs[1]) == values


def test_other_pdus_take_pynetdicom_s_own_decoder():
    release_rq = struct.pack(">BBLL", 0x05, 0, 4, 0)
    event, pdu = read_one(BufferedDUL, release_rq)
    assert event == "Evt12"
    assert type(pdu) is type(read_one(DULServiceProvider, release_rq)[1])


def test_bad_pdus_give_pynetdicom_s_event_codes():
    cases = {
        "unknown PDU type": (struct.pack(">BBL", 0x09, 0, 0), False),
        "PDV item longer than its PDU": (struct.pack(">BBLLB", 0x04, 0, 5, 50, 1), False),
        "closed mid-PDU": (p_data_tf((1, b"\x02" + b"x" * 100))[:60], True),
        "closed before a whole header": (b"\x04\x00", True),
    }
    for name, (wire, close) in cases.items():
        ours, theirs = read_one(BufferedDUL, wire, close), \
            read_one(DULServiceProvider, wire, close)
        assert ours == (theirs[0], None), name
        assert theirs[1] is None, name


def test_data_received_handlers_still_get_the_whole_pdu_as_bytes():
    dul, peer = dul_pair(BufferedDUL)
    seen = []
    dul.assoc.bind(evt.EVT_DATA_RECV, lambda event: seen.append(event.data))
    wire = p_data_tf((1, b"\x02pixels"))
    peer.sendall(wire)
    dul._read_pdu_data()
    assert dul.event_queue.get_nowait() == "Evt10"
    assert seen == [wire]
    assert type(seen[0]) is bytes


def test_associations_on_our_scp_use_the_buffered_dul_and_socket(tmp_path):
    settings = ingest_settings(tmp_path)
    server = start_scp(settings, ctx=None)  # no C-STORE here: the context is not used
    try:
        scu = AE()
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", settings.dicom.port, ae_title="XRAYVISION")
        assert assoc.is_established
        try:
            [accepted] = server.active_associations
            assert type(accepted) is BufferedAssociation
            assert type(accepted.dul) is BufferedDUL
            assert type(accepted.dul.socket) is BufferedAssociationSocket
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        server.shutdown()


# --- a streamed C-STORE data set: middle fragments written as they are read ----------------


def streaming_dul(tmp_path):
    """A DUL in the middle of receiving a C-STORE data set into ``tmp_path / "stream"``:
    established, its DIMSE message streaming to that file (as pynetdicom sets it up)."""
    dul, peer = dul_pair(BufferedDUL)
    dul.state_machine.current_state = "Sta6"
    stream = open(tmp_path / "stream", "wb")  # noqa: SIM115 - the DUL's to write, as pynetdicom's
    dul.assoc.dimse.message = types.SimpleNamespace(_data_set_file=stream)
    return dul, peer, stream


def test_middle_fragments_go_to_the_file_and_the_last_one_to_pynetdicom(tmp_path):
    dul, peer, stream = streaming_dul(tmp_path)
    first, second = bytes(range(256)) * 700, b"\x5a" * 300_000  # the second > the buffer
    sender = threading.Thread(target=peer.sendall, args=(
        p_data_tf((1, b"\x00" + first)) + p_data_tf((1, b"\x00" + second)),))
    sender.start()
    time.sleep(0.2)  # both PDUs arrive (the socket's buffers hold most of them)
    dul._read_pdu_data()  # both in one call: the second was waiting when the first was read
    sender.join()
    assert dul.event_queue.empty() and dul._recv_pdu.empty()
    stream.flush()
    assert (tmp_path / "stream").read_bytes() == first + second
    peer.sendall(p_data_tf((1, b"\x02" + b"last")))  # the last fragment: pynetdicom's path
    dul._read_pdu_data()
    assert dul.event_queue.get_nowait() == "Evt10"
    assert pdv_list(dul._recv_pdu.get_nowait()) == [(1, b"\x02last")]
    assert (tmp_path / "stream").read_bytes() == first + second


def test_many_small_fragments_read_together_and_what_follows_them_goes_back(tmp_path):
    """600 fragments of 50 bytes arrive in one block (more than one writev's worth),
    then the last fragment and a release request: those two are left to pynetdicom."""
    dul, peer, stream = streaming_dul(tmp_path)
    middles = [bytes([i % 256]) * 50 for i in range(600)]
    release_rq = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    peer.sendall(b"".join(p_data_tf((1, b"\x00" + m)) for m in middles)
                 + p_data_tf((1, b"\x02" + b"end")) + release_rq)
    time.sleep(0.2)
    dul._read_pdu_data()  # the middle fragments, then the last one: queued
    stream.flush()
    assert (tmp_path / "stream").read_bytes() == b"".join(middles)
    assert dul.event_queue.get_nowait() == "Evt10"
    assert pdv_list(dul._recv_pdu.get_nowait()) == [(1, b"\x02end")]
    assert dul.socket.ready  # the release request, given back to the socket
    dul._read_pdu_data()
    assert dul.event_queue.get_nowait() == "Evt12"


@pytest.mark.parametrize(("wire", "length"), [
    (p_data_tf((1, b"\x00" + b"x" * 100)), 100),  # a middle data set fragment
    (p_data_tf((1, b"\x02" + b"x" * 100)), 0),  # the last one
    (p_data_tf((1, b"\x01" + b"x" * 100)), 0),  # a command fragment
    (p_data_tf((1, b"\x00" + b"a"), (1, b"\x00" + b"b")), 0),  # two PDVs
    (p_data_tf((1, b"\x00" + b"x" * 100))[:11], 0),  # the header incomplete
    (b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00", 0),  # not a P-DATA-TF
])
def test_middle_fragment_length_reads_the_pdu_and_pdv_headers(wire, length):
    assert middle_fragment_length(memoryview(wire)) == length


def test_other_p_data_take_pynetdicom_s_path_while_streaming(tmp_path):
    dul, peer, stream = streaming_dul(tmp_path)
    cases = {
        "two PDVs": p_data_tf((1, b"\x00" + b"a" * 100), (1, b"\x00" + b"b" * 100)),
        "command fragment": p_data_tf((1, b"\x01" + b"c" * 100)),
        "last data set fragment": p_data_tf((1, b"\x02" + b"d" * 100)),
    }
    for name, wire in cases.items():
        peer.sendall(wire)
        dul._read_pdu_data()
        assert dul.event_queue.get_nowait() == "Evt10", name
        assert pdv_list(dul._recv_pdu.get_nowait()) == pdv_list(
            read_one(DULServiceProvider, wire)[1]), name  # as pynetdicom decodes it
    stream.flush()
    assert (tmp_path / "stream").read_bytes() == b""


def test_streaming_stops_for_a_user_handler_a_queued_event_or_another_state(tmp_path):
    dul, _, stream = streaming_dul(tmp_path)
    assert dul._streaming_file() is stream
    dul.event_queue.put("Evt10")  # a PDU read before this one is not processed yet
    assert dul._streaming_file() is None
    dul.event_queue.get_nowait()
    dul.state_machine.current_state = "Sta7"  # release requested
    assert dul._streaming_file() is None
    dul.state_machine.current_state = "Sta6"
    dul.assoc.bind(evt.EVT_PDU_RECV, lambda event: None)  # the user sees every PDU
    assert dul._streaming_file() is None
    dul.assoc.unbind(evt.EVT_PDU_RECV, dul.assoc.get_handlers(evt.EVT_PDU_RECV)[-1][0])
    assert dul._streaming_file() is stream
    stream.close()
    assert dul._streaming_file() is None


def test_connection_closed_in_a_streamed_fragment_is_evt17(tmp_path):
    dul, peer, _ = streaming_dul(tmp_path)
    peer.sendall(p_data_tf((1, b"\x00" + b"x" * 10_000))[:5000])
    peer.close()
    dul._read_pdu_data()
    assert dul.event_queue.get_nowait() == "Evt17"
    assert dul._recv_pdu.empty()


def raw_and_jpeg_lossless(folder):
    raw = write(make_xray(rows=1500, cols=1200, bits=16, seed=7), folder / "raw.dcm")
    jpeg = folder / "jpegll.dcm"
    source = write(make_xray(rows=1200, cols=1000, bits=12, seed=8), folder / "src.dcm")
    subprocess.run(["dcmcjpeg", "+e1", str(source), str(jpeg)], check=True)
    return raw, jpeg


def test_a_fragment_that_cannot_be_written_aborts_as_in_pynetdicom(tmp_path):
    """Not taken for a lost connection (Evt17): the exception reaches the reactor, which
    aborts the association, as when pynetdicom's own write fails."""
    dul, peer, _ = streaming_dul(tmp_path)
    with open("/dev/full", "wb") as full:  # every write: ENOSPC
        dul.assoc.dimse.message._data_set_file = full
        peer.sendall(p_data_tf((1, b"\x00" + b"x" * 1000)))
        with pytest.raises(StreamWriteError) as raised:
            dul._read_pdu_data()
    assert raised.value.__cause__.errno == errno.ENOSPC
    assert dul.event_queue.empty()


async def test_storescu_data_sets_arrive_unchanged_through_the_fragment_path(
        tmp_path, db, monkeypatch):
    streamed = count_streamed(monkeypatch)
    raw, jpeg = raw_and_jpeg_lossless(tmp_path)
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_KEEP_DICOM="true")
    async with running_ingest(settings, db, tmp_path) as ingest:
        assert (await ingest.storescu(raw)).returncode == 0
        assert (await ingest.storescu(jpeg, args=("-xs", "--max-send-pdu", "16384"))
                ).returncode == 0
        await ingest.converted()
        for path in (raw, jpeg):
            sent = dcmread(path)
            stored = dcmread(io.BytesIO(ingest.store.get(sent.SOPInstanceUID, "dcm")))
            assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
            assert stored == sent  # every element, pixels included
    # most of both data sets took the fragment path
    assert sum(streamed) > 0.9 * (raw.stat().st_size + jpeg.stat().st_size)


# --- waiting for the peer instead of sleeping ---------------------------------------------


def test_wait_readable_returns_when_data_arrives_and_waits_otherwise():
    sock, peer = buffered_pair()
    started = time.monotonic()
    sock.wait_readable(0.05)
    assert time.monotonic() - started >= 0.045
    threading.Timer(0.05, peer.sendall, args=(b"x",)).start()
    started = time.monotonic()
    sock.wait_readable(5)
    assert time.monotonic() - started < 2
    sock.close()  # no connection: waits the time (a caller polling in a loop must not spin)
    started = time.monotonic()
    sock.wait_readable(0.05)
    assert time.monotonic() - started >= 0.045


def test_wait_readable_returns_when_woken_and_drains_the_waker():
    sock, _ = buffered_pair()
    waker, far = socket.socketpair()
    waker.setblocking(False)
    threading.Timer(0.05, far.send, args=(b"\0",)).start()
    started = time.monotonic()
    sock.wait_readable(5, waker)
    assert time.monotonic() - started < 2
    with pytest.raises(BlockingIOError):
        waker.recv(1)  # drained: the next wait waits
    waker.close()
    far.close()


def test_the_reactor_waits_for_the_socket_only_with_nothing_queued():
    dul, _ = dul_pair(BufferedDUL)
    dul._open_waker()
    waits = []
    dul.socket.wait_readable = lambda timeout, waker: waits.append(timeout)
    dul._is_transport_event()
    dul.event_queue.put("Evt18")
    dul._is_transport_event()
    dul.event_queue.get_nowait()
    dul.to_provider_queue.put(object())
    dul._is_transport_event()
    assert waits == [BufferedDUL.IDLE_WAIT]
    dul._close_waker()


def test_without_a_wake_up_socket_the_reactor_polls_as_pynetdicom_does(monkeypatch):
    dul, _ = dul_pair(BufferedDUL)

    def no_descriptors():
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", no_descriptors)
    dul._open_waker()
    waits = []
    dul.socket.wait_readable = lambda timeout: waits.append(timeout)
    dul._is_transport_event()
    dul.send_pdu(P_DATA())  # nothing to wake: no error
    assert waits == [BufferedDUL.POLL_WAIT]
    dul._close_waker()


@pytest.mark.parametrize("wake", ["send_pdu", "kill_dul"])
def test_a_primitive_to_send_or_a_kill_ends_the_reactor_s_wait_at_once(monkeypatch, wake):
    monkeypatch.setattr(BufferedDUL, "IDLE_WAIT", 30)
    dul, _ = dul_pair(BufferedDUL)
    dul._open_waker()
    waiting = threading.Thread(target=dul._is_transport_event)
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive() and dul._waiting
    started = time.monotonic()
    if wake == "send_pdu":
        dul.send_pdu(P_DATA())
    else:
        dul.kill_dul()
    waiting.join(5)
    assert not waiting.is_alive() and time.monotonic() - started < 2
    dul._close_waker()


@pytest.mark.parametrize("end", ["release", "abort"])
def test_associations_wake_each_other_instead_of_polling(tmp_path, monkeypatch, end):
    """With the reactors' longest waits at 30 s, echoes and the release (or an abort)
    still take moments: each message received, response to send, release request or
    abort ends a wait."""
    monkeypatch.setattr(BufferedDUL, "IDLE_WAIT", 30)
    monkeypatch.setattr(BufferedAssociation, "REACTOR_WAIT", 30)
    settings = ingest_settings(tmp_path)
    server = start_scp(settings, ctx=None)
    try:
        scu = AE()
        scu.add_requested_context(Verification)
        started = time.monotonic()
        assoc = scu.associate("127.0.0.1", settings.dicom.port, ae_title="XRAYVISION")
        assert assoc.is_established
        [accepted] = server.active_associations
        for _ in range(5):
            assert assoc.send_c_echo().Status == 0x0000
        if end == "release":
            assoc.release()
            assert assoc.is_released
        else:
            assoc.abort()
        accepted.join(5)
        assert not accepted.is_alive() and not accepted.dul.is_alive()
        assert time.monotonic() - started < 5
        assert accepted.dul._waker is None  # closed with its thread
    finally:
        server.shutdown()


def test_a_pdu_over_the_limit_is_refused_unread_and_the_connection_closed(tmp_path):
    dul, peer, stream = streaming_dul(tmp_path)
    dul.assoc.acceptor.maximum_length = 1000
    peer.sendall(p_data_tf((1, b"\x00" + b"x" * 2000)))
    dul._read_pdu_data()
    assert dul.event_queue.get_nowait() == "Evt17" and dul._recv_pdu.empty()
    assert peer.recv(10) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])  # A-ABORT
    with contextlib.suppress(ConnectionResetError):  # reset: the refused bytes were unread
        assert peer.recv(10) == b""  # closed
    stream.close()
    peer.close()
