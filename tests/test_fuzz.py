"""Property-based fuzzing of the wire decoder: arbitrary bytes never cost more than a ProtocolError.

The decoder under test is the real one: an Inflow reading from a real loopback TCP
connection, driven by the engine, with the peer's bytes followed by EOF.
"""

from __future__ import annotations

import socket
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ringdist import engine, flows, wire
from ringdist.channel import Channel
from ringdist.errors import MismatchError, PeerLostError, ProtocolError, RingError, RingTimeoutError

EXPECTED = wire.make_header("all_gather", 0, "<f4", (4,))
EXPECTED_HEADER = wire.Header(EXPECTED)
PAYLOAD = 16  # bytes the operation expects
ALLOCATION_BOUND = 1 << 20  # the decoder may not allocate more than this, whatever a frame claims

_listener = socket.create_server(("127.0.0.1", 0))


def decode(data: bytes) -> str:
    """Feed `data` (then EOF) to an Inflow; return "ok" or the error class name."""
    sender = socket.create_connection(_listener.getsockname())
    receiver, _ = _listener.accept()
    sender.sendall(data)
    sender.close()
    ch = Channel(receiver, me=1, peer=0, group="fuzz", role="left")
    out = np.zeros(PAYLOAD, dtype=np.uint8)
    flow = flows.Inflow(ch, flows.Segments([memoryview(out)]), "all_gather", EXPECTED_HEADER)
    tracemalloc.start()
    try:
        engine.run([flow], [], [ch], timeout=5, op="all_gather", me=1)
        result = "ok"
    except (ProtocolError, MismatchError, PeerLostError) as exc:
        result = type(exc).__name__
    except RingError as exc:
        if hasattr(exc, "ringdist_origin"):  # a well-formed ABORT frame: the error it carries, by design
            result = "aborted"
        elif isinstance(exc, RingTimeoutError):
            raise AssertionError("the decoder waited for bytes that can never come (EOF was sent)")
        else:
            raise
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ch.close()
    assert peak < ALLOCATION_BOUND, f"decoder allocated {peak} bytes"
    return result


def frame(kind: int, body: bytes) -> bytes:
    return wire.encode_prefix(kind, len(body)) + body


GOOD = frame(wire.HEADER, wire.encode_map(wire.HEADER, EXPECTED)[8:]) + frame(wire.DATA, bytes(range(16)))


def test_a_valid_stream_decodes():
    assert decode(GOOD) == "ok"


fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    assert decode(data) in ("ok", "ProtocolError", "MismatchError", "PeerLostError", "aborted")


@fuzz
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=512))
def test_frames_with_any_kind_and_claimed_length(kind, length, body):
    data = wire.PREFIX.pack(wire.MAGIC, kind, length) + body
    assert decode(data) in ("ok", "ProtocolError", "MismatchError", "PeerLostError", "aborted")


@fuzz
@given(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=64))
@example(2, bytes([wire.ABORT]))  # the HEADER's kind byte made ABORT: a well-formed ABORT without error/message
def test_corrupted_valid_streams(position, junk):
    data = GOOD[:position] + junk + GOOD[position + len(junk):]
    assert decode(data) in ("ok", "ProtocolError", "MismatchError", "PeerLostError", "aborted")


@fuzz
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=8), st.binary(max_size=8),
                                                      st.lists(st.integers(-3, 10), max_size=4), st.none(),
                                                      st.booleans(), st.floats()), max_size=6))
def test_header_maps_of_any_shape(fields):
    body = wire.encode_map(wire.HEADER, fields)[8:]
    result = decode(frame(wire.HEADER, body) + frame(wire.DATA, bytes(16)))
    assert result in ("ok", "ProtocolError", "MismatchError", "PeerLostError", "aborted")
    if result == "ok":
        assert fields == EXPECTED


@fuzz
@given(st.binary(max_size=512))
def test_control_and_handshake_decoders_raise_only_protocol_errors(body):
    for check in (wire.check_header, wire.check_hello):
        try:
            check(wire.decode_map(body))
        except ProtocolError:
            pass


def test_a_frame_claiming_more_than_the_operation_needs_is_refused_without_allocating():
    header = frame(wire.HEADER, wire.encode_map(wire.HEADER, EXPECTED)[8:])
    assert decode(header + wire.encode_prefix(wire.DATA, 2**32 - 1)) == "ProtocolError"
    assert decode(header + wire.encode_prefix(wire.DATA, PAYLOAD + 1) + bytes(PAYLOAD + 1)) == "ProtocolError"
    assert decode(wire.encode_prefix(wire.HEADER, wire.MAX_CONTROL + 1)) == "ProtocolError"
    assert issubclass(ProtocolError, RingError)
