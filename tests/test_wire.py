"""The sans-I/O wire layer and the handshake, without processes."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from ringdist import wire
from ringdist.errors import AuthError, ProtocolError
from ringdist.handshake import client_handshake
from helpers import serve_handshake


def test_prefix_round_trip_and_bounds():
    for kind in (wire.HEADER, wire.DATA, wire.ABORT):
        assert wire.decode_prefix(wire.encode_prefix(kind, 1234)) == (kind, 1234)
    with pytest.raises(ProtocolError, match="magic"):
        wire.decode_prefix(b"XX" + wire.encode_prefix(wire.DATA, 1)[2:])
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        wire.decode_prefix(wire.PREFIX.pack(wire.MAGIC, 99, 0))
    with pytest.raises(ProtocolError, match="limit"):
        wire.decode_prefix(wire.encode_prefix(wire.HEADER, wire.MAX_CONTROL + 1))
    # DATA frames are bounded by the operation, not here
    assert wire.decode_prefix(wire.encode_prefix(wire.DATA, 2**32 - 1))[1] == 2**32 - 1
    with pytest.raises(ProtocolError):
        wire.decode_prefix(b"RD\x10")


def test_header_round_trip_and_description():
    header = wire.make_header("all_gather", 3, "<f4", (2, 5))
    frame = wire.encode_map(wire.HEADER, header)
    kind, length = wire.decode_prefix(frame[:8])
    assert (kind, length) == (wire.HEADER, len(frame) - 8)
    decoded = wire.check_header(wire.decode_map(frame[8:]))
    assert decoded == header
    assert wire.describe_header(decoded) == "all_gather(shape=(2, 5), dtype=float32) [call #3]"
    assert "root=1" in wire.describe_header(wire.make_header("broadcast", 0, "<i8", (4,), root=1))
    # The other byte order is shown as such: a mismatch between the two must not read float32 on both sides.
    assert "dtype='>f4'" in wire.describe_header(wire.make_header("all_sum", 0, ">f4", (4,)))
    assert "dtype=int8" in wire.describe_header(wire.make_header("all_sum", 0, "|i1", (4,)))


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x91\x01", b"\x81\x01\x02", bytes(range(200, 256)), b"\xdd\xff\xff\xff\xff"])
def test_garbage_bodies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        wire.check_header(wire.decode_map(body))


@pytest.mark.parametrize("fields", [
    {"op": 1, "seq": 0, "dtype": "<f4", "shape": []},
    {"op": "x", "seq": True, "dtype": "<f4", "shape": []},
    {"op": "x", "seq": 0, "dtype": "<f4", "shape": [-1]},
    {"op": "x", "seq": 0, "dtype": "<f4", "shape": [1.5]},
    {"op": "x", "seq": 0, "dtype": "<f4"},
])
def test_malformed_headers_are_protocol_errors(fields):
    with pytest.raises(ProtocolError):
        wire.check_header(fields)


def _handshake(client_secret: bytes, server_secret: bytes, job: str | None = None):
    a, b = socket.socketpair()
    result = {}

    def serve():
        try:
            result["hello"] = serve_handshake(b, server_secret, job or wire.job_id(server_secret),
                                              time.monotonic() + 5)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            result["server"] = exc

    t = threading.Thread(target=serve)
    t.start()
    hello = wire.make_hello(wire.job_id(client_secret), "world", 3, "ring", 0, os.urandom(16))
    try:
        client_handshake(a, client_secret, hello, time.monotonic() + 5, "rank 1")
    except Exception as exc:  # noqa: BLE001
        result["client"] = exc
    t.join(5)
    a.close()
    b.close()
    return result


def test_handshake_accepts_the_same_secret():
    result = _handshake(b"s3cret", b"s3cret")
    assert "client" not in result and "server" not in result
    assert result["hello"]["rank"] == 3 and result["hello"]["group"] == "world"


def test_handshake_refuses_a_wrong_secret_on_both_sides():
    result = _handshake(b"wrong", b"right", job=wire.job_id(b"wrong"))
    assert isinstance(result["server"], AuthError)
    assert isinstance(result["client"], AuthError)


def test_handshake_refuses_another_job():
    result = _handshake(b"a", b"b")
    assert isinstance(result["server"], AuthError) and "another job" in str(result["server"])
    assert isinstance(result["client"], AuthError)


def test_a_recorded_proof_cannot_be_replayed():
    secret = b"k" * 32
    hello = wire.make_hello(wire.job_id(secret), "world", 0, "ring", 0, os.urandom(16))
    body = wire.encode_map(wire.HELLO, hello)[8:]
    old = wire.proof_mac(secret, b"client", body, os.urandom(16))
    fresh = wire.proof_mac(secret, b"client", body, os.urandom(16))
    assert not wire.macs_equal(old, fresh)
    # one side's proof never serves as the other's
    nonce = os.urandom(16)
    assert not wire.macs_equal(wire.proof_mac(secret, b"client", body, nonce),
                               wire.proof_mac(secret, b"server", body, nonce))


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40])
def test_header_template_bytes_equal_msgpack_packing(seq):
    cases = [("all_gather", "<f4", (4096,), {"path": "direct"}), ("broadcast", "|u1", (), {"root": 3}),
             ("all_sum", "<c16", (2, 3, 5), {}), ("split", "<i8", (1, 2), {}),
             ("all_gather", "[('a', '<i4'), ('b', '<f8')]", (7,), {"path": "two-shot"})]
    for op, dtype, shape, extra in cases:
        made = wire.HeaderTemplate(op, dtype, shape, **extra).make(seq)
        packed = wire.Header(wire.make_header(op, seq, dtype, shape, **extra))
        assert (made.body, made.frame, made.fields) == (packed.body, packed.frame, packed.fields)


def test_a_dtype_too_long_for_a_header_is_refused_before_anything_is_sent():
    import numpy as np

    tag = wire.dtype_tag(np.dtype([(f"field_{i:05d}", "<i1") for i in range(3000)]))
    with pytest.raises(ValueError, match=r"all_gather: the dtype's description is \d+ bytes, over the 32768"):
        wire.HeaderTemplate("all_gather", tag, (2,))
    with pytest.raises(ValueError, match="send: the dtype's description"):
        wire.make_header("send", 0, tag, (2,))
    wire.HeaderTemplate("all_gather", wire.dtype_tag(np.dtype([(f"f{i}", "<i1") for i in range(500)])), (2,))
    # Counted in bytes, as sent: 250 fields of 100 CJK characters (under 32 K characters, 78 KB).
    wide = wire.dtype_tag(np.dtype([("名" * 100 + str(i), "<i1") for i in range(250)]))
    assert len(wide) < wire.DTYPE_TAG_MAX < len(wide.encode())
    with pytest.raises(ValueError, match=r"the dtype's description is \d+ bytes"):
        wire.HeaderTemplate("all_gather", wide, (2,))
