"""The wire format, sans I/O: bytes in, messages out, and back.

Every byte on a ringdist connection belongs to a frame:

    +------+------+-----+----------------+------------------+
    | 'R'  | 'D'  |kind | pad (1 byte)   | length (u32, BE) |   8-byte prefix
    +------+------+-----+----------------+------------------+
    | body: `length` bytes (msgpack map, or raw array bytes for DATA)  |

Control frames (handshake, HEADER, ABORT, CONTROL) carry a msgpack map and are
bounded by MAX_CONTROL; DATA frames carry raw array bytes and are bounded by
what the current operation still expects. This module knows nothing of sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 1
MAGIC = b"RD"
PREFIX = struct.Struct("!2sBxI")
PREFIX_SIZE = PREFIX.size  # 8

# Frame kinds.
HELLO = 1  # connecting side: who I am, and a nonce
CHALLENGE = 2  # accepting side: its nonce
PROOF = 3  # connecting side: HMAC over both nonces and the hello
WELCOME = 4  # accepting side: its own HMAC (mutual authentication)
REJECT = 5  # accepting side: why the connection is refused
HEADER = 16  # per-collective header: op, seq, dtype, shape
DATA = 17  # raw payload bytes
ABORT = 18  # a collective failed on the sender; carries the error
CONTROL = 19  # rendezvous and control messages (msgpack map)

CONTROL_KINDS = frozenset({HELLO, CHALLENGE, PROOF, WELCOME, REJECT, HEADER, ABORT, CONTROL})
KNOWN_KINDS = CONTROL_KINDS | {DATA}
KIND_NAMES = {
    HELLO: "HELLO", CHALLENGE: "CHALLENGE", PROOF: "PROOF", WELCOME: "WELCOME",
    REJECT: "REJECT", HEADER: "HEADER", DATA: "DATA", ABORT: "ABORT", CONTROL: "CONTROL",
}

MAX_CONTROL = 64 * 1024  # largest control frame body (a rendezvous table of ~1000 ranks fits)
PACK_BUFFER = 1024  # msgpack's initial buffer (it grows as needed); its default, 256 KiB, is allocated per call
NONCE_SIZE = 16


def encode_prefix(kind: int, length: int) -> bytes:
    return PREFIX.pack(MAGIC, kind, length)


def pack_prefix_into(buf: bytearray | memoryview, kind: int, length: int) -> None:
    PREFIX.pack_into(buf, 0, MAGIC, kind, length)


def decode_prefix(prefix: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Parse an 8-byte prefix into (kind, length); ProtocolError on anything else."""
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError(f"frame prefix must be {PREFIX_SIZE} bytes, got {len(prefix)}")
    magic, kind, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r} (not a ringdist peer?)")
    if kind not in KNOWN_KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    if kind in CONTROL_KINDS and length > MAX_CONTROL:
        raise ProtocolError(f"{KIND_NAMES[kind]} frame claims {length} bytes, limit is {MAX_CONTROL}")
    return kind, length


def encode_map(kind: int, fields: dict[str, Any]) -> bytes:
    """A whole control frame: prefix + msgpack body."""
    body = msgpack.packb(fields, use_bin_type=True, buf_size=PACK_BUFFER)
    if len(body) > MAX_CONTROL:
        raise ValueError(f"{KIND_NAMES[kind]} body of {len(body)} bytes exceeds {MAX_CONTROL}")
    return encode_prefix(kind, len(body)) + body


def decode_map(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a control frame body; anything but a str-keyed map is a ProtocolError."""
    try:
        value = msgpack.unpackb(
            bytes(body), raw=False, strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable control frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"control frame is not a map with string keys: {type(value).__name__}")
    return value


def require(fields: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Field `name` of a decoded map, checked for type (bool is not an int here)."""
    if name not in fields:
        raise ProtocolError(f"missing field {name!r}")
    value = fields[name]
    if isinstance(value, bool) and kind is not bool and (kind is int or kind == (int,)):
        raise ProtocolError(f"field {name!r} must be {kind}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} has type {type(value).__name__}")
    return value


# ---- per-collective header -------------------------------------------------------------------


# Header fields that follow from settings and roles rather than from a call's arguments.
INTERNAL_FIELDS = ("path", "ways", "step")


def make_header(op: str, seq: int, dtype: str, shape: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    header = {"op": op, "seq": seq, "dtype": dtype, "shape": list(shape)}
    header.update(extra)
    return header


class Header:
    """A collective's header, encoded once: `fields`, its msgpack `body` and the whole `frame`.

    The encoding is deterministic, so a peer's header equal to ours arrives as the same bytes.
    """

    __slots__ = ("fields", "body", "frame")

    def __init__(self, fields: dict[str, Any], body: bytes | None = None):
        self.fields = fields
        self.body = msgpack.packb(fields, use_bin_type=True, buf_size=PACK_BUFFER) if body is None else body
        self.frame = PREFIX.pack(MAGIC, HEADER, len(self.body)) + self.body


def pack_uint(value: int) -> bytes:
    """A non-negative int as msgpack packs it: the shortest of fixint, uint8/16/32/64."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x100:
        return b"\xcc" + value.to_bytes(1, "big")
    if value < 0x10000:
        return b"\xcd" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


class HeaderTemplate:
    """The headers of one kind of call (op, dtype, shape, extras) for any call number.

    A msgpack map is its entries' encodings in order, so the body is the bytes before
    `seq`'s value, that value, and the bytes after: no packing per call.
    """

    __slots__ = ("base", "head", "tail")

    def __init__(self, op: str, dtype: str, shape: tuple[int, ...], **extra: Any):
        self.base = make_header(op, 0, dtype, shape, **extra)  # op, seq, then the rest, in this order
        pack = msgpack.Packer(use_bin_type=True, autoreset=True, buf_size=PACK_BUFFER)
        self.head = pack.pack_map_header(len(self.base)) + pack.pack("op") + pack.pack(op) + pack.pack("seq")
        self.tail = b"".join(pack.pack(k) + pack.pack(v) for k, v in self.base.items() if k not in ("op", "seq"))

    def make(self, seq: int) -> Header:
        fields = dict(self.base)
        fields["seq"] = seq
        return Header(fields, self.head + pack_uint(seq) + self.tail)


def check_header(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate a decoded HEADER body; return it."""
    require(fields, "op", str)
    require(fields, "seq", int)
    require(fields, "dtype", str)
    shape = require(fields, "shape", list)
    if len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"header shape is not a list of non-negative ints: {shape!r}")
    return fields


def describe_header(fields: dict[str, Any]) -> str:
    """Human form of a header, e.g. `all_gather(shape=(3, 4), dtype=float32) [call #2]`.

    The `path` field (direct or ring, chosen from the size) is left out: it follows from the rest;
    so is `step`, which names a frame's part in a call of several (a broadcast's closing header).
    """
    import numpy as np

    try:
        dt = np.dtype(fields["dtype"])
        dtype = dt.name if dt.kind in "biufc" else dt.str  # float32, but '<U6' rather than str192
    except Exception:
        dtype = repr(fields.get("dtype"))
    shape = tuple(fields.get("shape", ()))
    if fields.get("op") == "split":  # its (color, key) exchange is an implementation detail
        return f"Group.split() [call #{fields.get('seq')}]"
    extras = "".join(
        f", {k}={v!r}" for k, v in sorted(fields.items()) if k not in ("op", "seq", "dtype", "shape") + INTERNAL_FIELDS
    )
    return f"{fields.get('op')}(shape={shape}, dtype={dtype}{extras}) [call #{fields.get('seq')}]"


# ---- handshake -------------------------------------------------------------------------------


def job_id(secret: bytes) -> str:
    """A public identifier derived from the job secret (it reveals nothing usable)."""
    return hashlib.sha256(b"ringdist-job-id\0" + secret).hexdigest()[:16]


def make_hello(job: str, group: str, rank: int, kind: str, lane: int, nonce: bytes) -> dict[str, Any]:
    return {"magic": "ringdist", "version": PROTOCOL_VERSION, "job": job, "group": group,
            "rank": rank, "kind": kind, "lane": lane, "nonce": nonce}


def check_hello(fields: dict[str, Any]) -> dict[str, Any]:
    if fields.get("magic") != "ringdist":
        raise ProtocolError("HELLO without the ringdist magic")
    version = require(fields, "version", int)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    for name in ("job", "group", "kind"):
        if len(require(fields, name, str)) > 256:
            raise ProtocolError(f"HELLO field {name!r} too long")
    if require(fields, "rank", int) < 0 or require(fields, "lane", int) < 0:
        raise ProtocolError("HELLO rank and lane must be >= 0")
    nonce = require(fields, "nonce", bytes)
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"HELLO nonce must be {NONCE_SIZE} bytes")
    return fields


def proof_mac(secret: bytes, role: bytes, hello_body: bytes, server_nonce: bytes) -> bytes:
    """HMAC-SHA256 binding the secret to this connection's hello and the server's fresh nonce.

    `role` is b"client" or b"server" so one side's proof can never be replayed as the other's.
    """
    return hmac.new(secret, role + b"\0" + hello_body + server_nonce, hashlib.sha256).digest()


def macs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
