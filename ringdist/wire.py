"""The wire format, sans I/O: bytes in, messages out, and back.

Every byte on a ringdist connection belongs to a frame:

    +------+------+-----+----------------+------------------+
    | 'R'  | 'D'  |kind | pad (1 byte)   | length (u32, BE) |   8-byte prefix
    +------+------+-----+----------------+------------------+
    | body: `length` bytes (msgpack map, or raw array bytes for DATA)  |

Control frames (handshake, HEADER, ABORT, CONTROL) carry a msgpack map and are
bounded by MAX_CONTROL; DATA frames carry raw array bytes and are bounded by
what the current operation still expects. A `FrameReader` turns one connection's bytes
into events (a control frame, the start of a DATA frame, NEED_DATA); every reader of a
data connection goes through one. This module knows nothing of sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Iterator

import msgpack

from .errors import CALLED_AS, ProtocolError

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


MAX_LENGTH = 0xFFFFFFFF  # a frame's length field holds this at most: larger payloads go in several frames


def encode_prefix(kind: int, length: int) -> bytes:
    if length > MAX_LENGTH:
        raise ProtocolError(f"a frame of {length} bytes: a frame's length holds {MAX_LENGTH} at most")
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


# Calls of pickled objects: no array of the caller's in their headers.
OBJECT_OPS = ("all_gather_object", "broadcast_object", "send_object")
# Header fields that follow from settings and roles rather than from a call's arguments.
INTERNAL_FIELDS = ("path", "ways", "step", "each")
# Header fields that differ by sender or by relay within one call: a stream's block sizes, the
# hop that relays it round the ring, where it lies in a segment (`algorithms/shm_blocks.py`), the
# fields of each rank whose block a step carries (`algorithms/bruck.py`'s gather_v).
PER_SENDER_FIELDS = ("sizes", "hop", "at", "each")
# Header fields that differ by role within one call, by op: a scatter's root declares its array,
# the other ranks pass none (their headers carry an empty array's dtype and shape).
ROLE_FIELDS = {"scatter": ("dtype", "shape")}


def dtype_tag(dtype: Any) -> str:
    """A dtype as headers name it: its array-protocol string ('<f4'); a structured dtype's
    descr (padding included: `blocks.dtype_from` reads it back whole); an extension dtype by its
    name, since its string may be raw bytes ('<V2': ml_dtypes' bfloat16, float8 and int4 all
    look alike), so ranks passing different ones disagree."""
    if dtype.fields is not None:
        try:
            return str(dtype.descr)
        except ValueError:  # numpy has no description of such fields for another process to read
            raise ValueError(f"dtype {dtype} has overlapping or out-of-order fields, which numpy cannot "
                             f"describe: send x.view(np.uint8), and .view(dtype) on arrival") from None
    if dtype.num >= 256:  # a dtype a package registered: its string may be raw bytes, or read as another
        return dtype.name  # (ml_dtypes' float8_e5m2 is '<f1', which numpy cannot read back)
    return dtype.str


# The longest dtype description a header carries (a header is at most MAX_CONTROL, with room
# left for the fields a call's steps add): a structured dtype of about a thousand fields.
DTYPE_TAG_MAX = MAX_CONTROL // 2


def check_dtype_tag(op: str, dtype: str) -> None:
    """ValueError for a dtype description too long for a header (counted in bytes, as sent)."""
    if len(dtype) <= DTYPE_TAG_MAX // 4:  # the common case: at most 4 bytes a character
        return
    size = len(dtype.encode("utf-8", "surrogatepass"))
    if size > DTYPE_TAG_MAX:
        raise ValueError(
            f"{op}: the dtype's description is {size} bytes, over the "
            f"{DTYPE_TAG_MAX} a header carries (a structured dtype of about a thousand fields or more): send "
            f"the array as raw bytes (x.view(np.uint8), then .view(dtype) on arrival)")


def header_dtype(op: str, dtype: Any) -> str:
    """`dtype_tag(dtype)`, checked for a header of `op`; ValueError naming `op` if it has none."""
    try:
        tag = dtype_tag(dtype)
    except ValueError as exc:
        raise ValueError(f"{op}: {exc}") from None
    check_dtype_tag(op, tag)
    return tag


def make_header(op: str, seq: int, dtype: str, shape: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    """A call's header fields; ValueError (before anything is sent) for a dtype too long to describe in one."""
    check_dtype_tag(op, dtype)
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
        body = self.head + (bytes((seq,)) if seq < 0x80 else pack_uint(seq)) + self.tail
        return Header(fields, body)


def check_header(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate a decoded HEADER body; return it."""
    require(fields, "op", str)
    require(fields, "seq", int)
    require(fields, "dtype", str)
    shape = require(fields, "shape", list)
    if len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"header shape is not a list of non-negative ints: {shape!r}")
    return fields


def describe_dtype(tag: Any) -> str:
    """A header's dtype as messages name it: float32, bfloat16; '>f4' (quoted) where the byte order
    is not this machine's (else both sides of a mismatch would read float32); '<U6' rather than str192."""
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():  # a peer's tag numpy deprecates ('a') is described, not warned of
            warnings.simplefilter("ignore")
            dt = np.dtype(tag)
        return dt.name if (dt.kind in "biufc" and dt.isnative) or dtype_tag(dt) == dt.name else repr(dt.str)
    except Exception:
        return repr(tag)


_EXCHANGES = {"split": "Group.split", "Grid": "Grid", "Grid.sub": "Grid.sub"}  # calls whose header is an all_gather's


def describe_header(fields: dict[str, Any]) -> str:
    """Human form of a header, e.g. `all_gather(shape=(3, 4), dtype=float32) [call #2]`.

    The `path` field (direct or ring, chosen from the size) is left out: it follows from the rest;
    so is `step`, which names a frame's part in a call of several (a broadcast's closing header).
    """
    dtype = describe_dtype(fields.get("dtype"))
    shape = tuple(fields.get("shape", ()))
    if fields.get("op") in _EXCHANGES:  # its rows (color and key; a grid's dims) are an implementation detail
        return f"{_EXCHANGES[fields.get('op')]}() [call #{fields.get('seq')}]"
    op = fields.get("op")
    if isinstance(op, str) and op.endswith(" (agreement step)"):  # an object collective's last step (`objects`),
        # an uneven scatter's first (`uneven`): its bytes are an implementation detail, its root is not
        step = "".join(f", {k}={v!r}" for k, v in sorted(fields.items()) if k in ("root", "uneven"))
        return f"{op[:-len(' (agreement step)')]}({step[2:]}) (agreement step) [call #{fields.get('seq')}]" if step \
            else f"{op} [call #{fields.get('seq')}]"
    # The other fields, as (name, shown value), named as the call was made.
    shown = [(k, repr(v)) for k, v in sorted(fields.items()) if k not in ("op", "seq", "dtype", "shape") + INTERNAL_FIELDS]
    if op in OBJECT_OPS:  # their header's array is a stand-in (`arrays.NOTHING`)
        sizes = fields.get("sizes")
        if isinstance(sizes, list) and all(isinstance(k, int) for k in sizes):  # the pickle's parts: their total
            shown = [(k, v) for k, v in shown if k != "sizes"] + [("", f"{sum(sizes)} bytes pickled")]
        return f"{op}({_arguments(shown)[2:]}) [call #{fields.get('seq')}]"
    if (fields.get("uneven") is True or fields.get("splits") is True) and shape:  # rows differ by rank:
        shape = "(any" + "".join(f", {d}" for d in shape[1:]) + ("," if len(shape) == 1 else "") + ")"  # not in the header
    call = op
    if isinstance(op, str) and op in CALLED_AS:  # a reduction with no function of its own: as it was called
        call, reduction = CALLED_AS[op]
        shown = [("op", repr(reduction))] + [(k, v) for k, v in shown if k != "reduce"]
    elif op in ("reduce", "scan"):  # a rooted reduce's or a scan's reduction: its `op`
        shown = [("op" if k == "reduce" else k, v) for k, v in shown]
    if fields.get("splits") is True:  # counts given (or an all_to_all's splits): shown by the shape's "any"
        shown = [(k, v) for k, v in shown if k != "splits"]
    counts = fields.get("counts")
    if isinstance(counts, str):  # a reduce_scatter's counts, as the header carries them: as a list
        shown = [(k, f"[{counts.replace(',', ', ')}]" if k == "counts" else v) for k, v in shown]
    return f"{call}(shape={shape}, dtype={dtype}{_arguments(shown)}) [call #{fields.get('seq')}]"


def _arguments(shown: list[tuple[str, str]]) -> str:
    """', name=value, ...' (a nameless one: its text alone)."""
    return "".join(f", {k}={v}" if k else f", {v}" for k, v in shown)


def called_as(op: str) -> str:
    """A call as its user made it: `all_reduce(op='avg')` for all_avg, which has no function."""
    if op in CALLED_AS:
        call, reduction = CALLED_AS[op]
        return f"{call}(op={reduction!r})"
    return op


# ---- handshake -------------------------------------------------------------------------------


def job_id(secret: bytes) -> str:
    """A public identifier derived from the job secret (it reveals nothing usable)."""
    return hashlib.sha256(b"ringdist-job-id\0" + secret).hexdigest()[:16]


def local_socket_name(secret: bytes, address: tuple[str, int]) -> str:
    """The abstract Unix socket name of the rank listening first on `address` (ip, port)."""
    tag = hmac.new(secret, f"ringdist local socket {address[0]}:{address[1]}".encode(), hashlib.sha256)
    return "ringdist-" + tag.hexdigest()[:32]


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


# ---- reading frames ----------------------------------------------------------------------------


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Signal("NEED_DATA")  # no whole event is staged: feed more bytes
PAYLOAD = _Signal("PAYLOAD")  # inside a DATA frame: `payload_left` bytes of it are still to come


class ControlFrame:
    """A whole control frame: its kind and raw body (valid until the reader is fed again)."""

    __slots__ = ("kind", "body")

    def __init__(self, kind: int, body: memoryview):
        self.kind = kind
        self.body = body

    def fields(self) -> dict[str, Any]:
        """The body decoded (ProtocolError unless it is a str-keyed map)."""
        return decode_map(self.body)

    def __repr__(self) -> str:
        return f"ControlFrame({KIND_NAMES[self.kind]}, {bytes(self.body)!r})"


class DataFrame:
    """The start of a DATA frame of `length` payload bytes (the reader now expects them)."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length

    def __repr__(self) -> str:
        return f"DataFrame({self.length})"


class FrameReader:
    """The frames of one connection, from its bytes: no I/O, a fixed staging buffer.

    Bytes come in by `feed(data)`, or by receiving into `room()` and calling
    `landed(n)`. `next_event()` returns a `ControlFrame` once its whole frame is staged,
    a `DataFrame` as soon as a DATA prefix is, `PAYLOAD` while payload bytes are still due,
    and `NEED_DATA` otherwise; garbage raises ProtocolError. Payload bytes never need the
    buffer: `take_payload(dest)` copies what is staged, and a caller that received payload
    straight into its destination says so with `payload_landed(n)`. Control frames are
    bounded by MAX_CONTROL, so the buffer (larger than one) never grows.
    """

    __slots__ = ("buf", "view", "size", "start", "end", "payload_left")

    def __init__(self, size: int = 256 * 1024, buffer: Any = None):
        if size < MAX_CONTROL + PREFIX_SIZE:
            raise ValueError(f"a frame reader needs at least {MAX_CONTROL + PREFIX_SIZE} bytes, got {size}")
        self.buf = bytearray(size) if buffer is None else buffer  # `buffer`: `size` writable bytes of the caller's
        self.view = memoryview(self.buf)
        self.size = size
        self.start = 0  # first unread byte
        self.end = 0  # one past the last byte staged
        self.payload_left = 0  # bytes of the current DATA frame not yet taken

    def staged(self) -> int:
        return self.end - self.start

    def room(self, limit: int | None = None) -> memoryview:
        """Where the next bytes go (up to `limit`), compacting the buffer first when that helps."""
        start, end = self.start, self.end
        if start == end:
            self.start = self.end = end = 0
        elif start and self.size - end < MAX_CONTROL + PREFIX_SIZE:
            n = end - start
            self.view[:n] = self.view[start:end]  # a memmove, no copy made
            self.start, self.end = 0, n
            end = n
        stop = self.size if limit is None else min(self.size, end + limit)
        return self.view[end:stop]

    def landed(self, n: int) -> None:
        """`n` bytes were written at the front of `room()`."""
        if not 0 <= n <= self.size - self.end:
            raise ValueError(f"{n} bytes cannot have landed in {self.size - self.end} bytes of room")
        self.end += n

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of `data` as there is room for; return how much (the rest waits until
        the staged events are taken)."""
        room = self.room(len(data))
        n = len(room)
        room[:] = memoryview(data)[:n]
        self.end += n
        return n

    def next_event(self) -> ControlFrame | DataFrame | _Signal:
        if self.payload_left:
            return PAYLOAD
        start = self.start
        staged = self.end - start
        if staged < PREFIX_SIZE:
            return NEED_DATA
        kind, length = decode_prefix(self.view[start:start + PREFIX_SIZE])
        if kind == DATA:
            self.start = start + PREFIX_SIZE
            self.payload_left = length
            return DataFrame(length)
        if staged < PREFIX_SIZE + length:
            return NEED_DATA
        self.start = start + PREFIX_SIZE + length
        return ControlFrame(kind, self.view[start + PREFIX_SIZE:self.start])

    def next_prefix(self) -> tuple[int, int] | None:
        """(kind, length) of the next frame once its prefix is staged, without taking it."""
        if self.payload_left or self.end - self.start < PREFIX_SIZE:
            return None
        return decode_prefix(self.view[self.start:self.start + PREFIX_SIZE])

    def next_kind(self) -> int | None:
        """The kind of the next frame once its prefix is staged (its magic not yet checked)."""
        if self.payload_left or self.end - self.start < PREFIX_SIZE:
            return None
        return self.view[self.start + 2]

    def take_stream(self, intro: bytes, dest: memoryview) -> int | None:
        """Take `intro` (a control frame, then the prefix of a DATA frame of len(dest) bytes
        unless dest is empty) if the staged bytes begin with it, and copy the payload bytes
        staged after it into `dest`: how many (0 or more) once `intro` is taken; -1 if the
        staged bytes agree with it so far but end early; None if they differ (nothing is
        taken). A payload not all staged goes on with `take_payload` or `payload_landed`."""
        if self.payload_left:
            return None
        start = self.start
        end = self.end
        n = len(intro)
        if end - start < n:
            n = end - start
            return -1 if self.view[start:end] == intro[:n] else None
        if self.view[start:start + n] != intro:
            return None
        start += n
        need = len(dest)
        k = end - start
        if k > need:
            k = need
        if k:
            dest[:k] = self.view[start:start + k]
        self.start = start + k
        self.payload_left = need - k
        return k

    def take_payload(self, dest: memoryview) -> int:
        """Copy staged payload bytes (as many as fit in `dest`) to `dest`; return how many."""
        start = self.start
        n = min(len(dest), self.payload_left, self.end - start)
        if n:
            dest[:n] = self.view[start:start + n]
            self.start = start + n
            self.payload_left -= n
        return n

    def skip_payload(self) -> int:
        """Drop the staged payload bytes; return how many."""
        n = min(self.payload_left, self.end - self.start)
        self.start += n
        self.payload_left -= n
        return n

    def payload_landed(self, n: int) -> None:
        """`n` payload bytes were received straight into their destination (none was staged)."""
        if self.end != self.start or not 0 <= n <= self.payload_left:
            raise ValueError(f"{n} payload bytes cannot have landed with {self.payload_left} due "
                             f"and {self.end - self.start} staged")
        self.payload_left -= n

    def staged_control_frames(self) -> "Iterator[ControlFrame]":
        """The whole control frames staged after the current position, payloads skipped, read
        through a lookahead (this reader stays where it is). ProtocolError on garbage."""
        reader = self.lookahead()
        while True:
            event = reader.next_event()
            if event is PAYLOAD:
                reader.skip_payload()
                if reader.payload_left:
                    return
            elif event is NEED_DATA:
                return
            elif isinstance(event, ControlFrame):
                yield event

    def lookahead(self) -> "FrameReader":
        """A reader over the same staged bytes whose reading leaves this one where it is
        (for reading only: feeding it would move bytes under this one)."""
        other = FrameReader.__new__(FrameReader)
        other.buf, other.view, other.size = self.buf, self.view, self.size
        other.start, other.end, other.payload_left = self.start, self.end, self.payload_left
        return other
