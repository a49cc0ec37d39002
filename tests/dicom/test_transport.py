"""The SCP's receive path: whole PDUs with few system calls and no copies of P-DATA
values, under pynetdicom's contracts (checked against pynetdicom's own DUL)."""

import socket
import struct
import threading
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from xrayvision.dicom.scp import start_scp
from xrayvision.dicom.transport import BufferedAssociationSocket, BufferedDUL

from .conftest import ingest_settings

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
            assert type(accepted.dul) is BufferedDUL
            assert type(accepted.dul.socket) is BufferedAssociationSocket
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        server.shutdown()
