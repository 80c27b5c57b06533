"""The sans-I/O frame reader every reader of a data connection uses: unit tests and fuzzing.

The reader is fed bytes in any split (copied in by `feed`, or written into `room()` and
announced with `landed`), and a payload may bypass it (`payload_landed`): the events
must not depend on how the bytes came. Garbage costs a ProtocolError, nothing else, and
the staging buffer never holds more than one control frame's worth of unread bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringdist import wire
from ringdist.errors import ProtocolError

SIZE = wire.MAX_CONTROL + wire.PREFIX_SIZE  # the smallest reader there can be


def frame(kind: int, body: bytes) -> bytes:
    return wire.encode_prefix(kind, len(body)) + body


HEADER = wire.Header(wire.make_header("all_gather", 3, "<f4", (4,)))
ABORT = wire.encode_map(wire.ABORT, {"error": "RingError", "message": "gave up", "origin": 1, "seq": 3})


def read_all(reader: wire.FrameReader, chunks: list[bytes], modes: list[int] | None = None) -> list[tuple]:
    """Feed `chunks` in order and collect every event as plain values; a payload is collected
    as the bytes it carried. `modes[i]` says how chunk i comes in: 0 `feed`, 1 `room`+`landed`,
    2 straight into the payload's destination when the reader is inside a payload with
    nothing staged (else as 0)."""
    events: list[tuple] = []
    payload = bytearray()

    def drain() -> None:
        while True:
            event = reader.next_event()
            if event is wire.NEED_DATA:
                assert reader.staged() < wire.PREFIX_SIZE + wire.MAX_CONTROL  # bounded buffering
                return
            if event is wire.PAYLOAD:
                dest = bytearray(reader.payload_left)
                n = reader.take_payload(memoryview(dest))
                if not n:
                    return
                payload.extend(dest[:n])
                if not reader.payload_left:
                    events.append(("payload", bytes(payload)))
                    payload.clear()
            elif isinstance(event, wire.DataFrame):
                events.append(("DATA", event.length))
                if not event.length:
                    events.append(("payload", b""))
            else:
                assert isinstance(event, wire.ControlFrame)
                events.append((wire.KIND_NAMES[event.kind], bytes(event.body)))

    for i, chunk in enumerate(chunks):
        mode = modes[i % len(modes)] if modes else 0
        view = memoryview(chunk)
        while view:
            if mode == 2 and reader.payload_left and not reader.staged():
                n = min(len(view), reader.payload_left)
                payload.extend(view[:n])  # as if received with recv_into into the destination
                reader.payload_landed(n)
                if not reader.payload_left:
                    events.append(("payload", bytes(payload)))
                    payload.clear()
            elif mode == 1:
                room = reader.room(len(view))
                n = len(room)
                room[:] = view[:n]
                reader.landed(n)
            else:
                n = reader.feed(view)
            view = view[n:]
            drain()
    drain()
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_a_stream_read_whole_gives_its_frames_in_order():
    stream = HEADER.frame + frame(wire.DATA, b"abcd") + frame(wire.DATA, bytes(100_000)) + ABORT
    assert read_all(wire.FrameReader(SIZE), [stream]) == [
        ("HEADER", HEADER.body), ("DATA", 4), ("payload", b"abcd"),
        ("DATA", 100_000), ("payload", bytes(100_000)), ("ABORT", ABORT[8:])]


def test_events_wait_for_whole_control_frames_but_not_for_payloads():
    reader = wire.FrameReader(SIZE)
    reader.feed(HEADER.frame[:5])
    assert reader.next_event() is wire.NEED_DATA  # a partial prefix
    reader.feed(HEADER.frame[5:-1])
    assert reader.next_event() is wire.NEED_DATA  # a partial body
    reader.feed(HEADER.frame[-1:] + wire.encode_prefix(wire.DATA, 1 << 30))
    event = reader.next_event()
    assert isinstance(event, wire.ControlFrame) and event.kind == wire.HEADER
    assert event.fields() == HEADER.fields
    event = reader.next_event()
    assert isinstance(event, wire.DataFrame) and event.length == 1 << 30  # at once: the payload goes elsewhere
    assert reader.next_event() is wire.PAYLOAD and reader.payload_left == 1 << 30
    reader.payload_landed(1 << 29)
    assert reader.payload_left == 1 << 29 and reader.staged() == 0


@pytest.mark.parametrize("data, match", [
    (b"XY" + wire.encode_prefix(wire.DATA, 1)[2:], "magic"),
    (wire.PREFIX.pack(wire.MAGIC, 99, 0), "unknown frame kind"),
    (wire.encode_prefix(wire.CONTROL, wire.MAX_CONTROL + 1), "limit"),
])
def test_garbage_prefixes_are_protocol_errors_as_soon_as_staged(data, match):
    reader = wire.FrameReader(SIZE)
    reader.feed(data)
    with pytest.raises(ProtocolError, match=match):
        reader.next_event()


def test_an_undecodable_control_body_is_a_protocol_error():
    reader = wire.FrameReader(SIZE)
    reader.feed(frame(wire.HEADER, b"\xc1"))
    event = reader.next_event()
    with pytest.raises(ProtocolError, match="undecodable"):
        event.fields()


def test_take_stream_takes_the_expected_intro_and_staged_payload_or_nothing():
    intro = HEADER.frame + wire.encode_prefix(wire.DATA, 6)
    reader = wire.FrameReader(SIZE)
    dest = bytearray(6)
    reader.feed(intro[:10])
    assert reader.take_stream(intro, memoryview(dest)) == -1 and reader.staged() == 10  # so far so good
    assert reader.next_kind() == wire.HEADER
    reader.feed(intro[10:] + b"abcd")
    assert reader.take_stream(intro, memoryview(dest)) == 4 and dest[:4] == b"abcd"
    assert reader.payload_left == 2 and reader.staged() == 0 and reader.next_kind() is None
    reader.feed(b"ef")
    assert reader.take_payload(memoryview(dest)[4:]) == 2 and dest == b"abcdef"

    other = wire.Header(wire.make_header("all_gather", 3, "<f4", (5,)))
    reader.feed(other.frame + wire.encode_prefix(wire.DATA, 6))
    assert reader.take_stream(intro, memoryview(dest)) is None  # another call: left for the general reader
    event = reader.next_event()
    assert isinstance(event, wire.ControlFrame) and bytes(event.body) == other.body

    reader = wire.FrameReader(SIZE)
    reader.feed(wire.encode_prefix(wire.ABORT, 3)[:7])
    assert reader.next_kind() is None  # not a whole prefix yet
    reader.feed(wire.encode_prefix(wire.ABORT, 3)[7:])
    assert reader.next_kind() == wire.ABORT


def test_a_lookahead_reads_without_moving_the_reader():
    reader = wire.FrameReader(SIZE)
    reader.feed(HEADER.frame + frame(wire.DATA, b"xy") + ABORT)
    ahead = reader.lookahead()
    kinds = []
    while (event := ahead.next_event()) is not wire.NEED_DATA:
        if event is wire.PAYLOAD:
            ahead.skip_payload()
        else:
            kinds.append(type(event).__name__)
    assert kinds == ["ControlFrame", "DataFrame", "ControlFrame"]
    assert reader.staged() == len(HEADER.frame) + 10 + len(ABORT) and reader.next_prefix() == (wire.HEADER, len(HEADER.body))


def test_the_buffer_is_fixed_and_misuse_is_refused():
    with pytest.raises(ValueError, match="at least"):
        wire.FrameReader(1024)
    reader = wire.FrameReader(SIZE)
    assert reader.feed(wire.encode_prefix(wire.DATA, SIZE) + bytes(SIZE)) == SIZE  # the rest waits
    assert reader.feed(b"more") == 0
    with pytest.raises(ValueError):
        reader.landed(1)
    with pytest.raises(ValueError):
        reader.payload_landed(1)  # staged bytes come first
    assert isinstance(reader.next_event(), wire.DataFrame)
    assert reader.skip_payload() == SIZE - 8 and reader.payload_left == 8
    assert reader.feed(bytes(8)) == 8 and reader.skip_payload() == 8 and reader.next_event() is wire.NEED_DATA


fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames = st.one_of(
    st.binary(max_size=300).map(lambda b: frame(wire.DATA, b)),
    st.binary(min_size=1, max_size=200_000).map(lambda b: frame(wire.DATA, b)),
    st.sampled_from([HEADER.frame, ABORT, frame(wire.CONTROL, bytes(wire.MAX_CONTROL))]),
    st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=4).map(
        lambda d: wire.encode_map(wire.CONTROL, d)),
)


@fuzz
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 1 << 20), max_size=20),
       st.lists(st.integers(0, 2), min_size=1, max_size=5))
def test_any_split_of_valid_frames_gives_the_same_events(sequence, cuts, modes):
    stream = b"".join(sequence)
    whole = read_all(wire.FrameReader(SIZE), [stream])
    assert len([e for e in whole if e[0] != "payload"]) == len(sequence)
    assert read_all(wire.FrameReader(SIZE), split(stream, cuts), modes) == whole


@fuzz
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=10),
       st.lists(st.integers(0, 2), min_size=1, max_size=3))
def test_garbage_gives_protocol_errors_or_waits(data, cuts, modes):
    reader = wire.FrameReader(SIZE)
    try:
        events = read_all(reader, split(data, cuts), modes)
    except ProtocolError:
        return
    for kind, body in events:
        if kind not in ("DATA", "payload"):
            try:
                wire.decode_map(body)
            except ProtocolError:
                pass
    assert reader.staged() < wire.PREFIX_SIZE + wire.MAX_CONTROL


@fuzz
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=512))
def test_any_prefix_claims_cost_no_memory(kind, length, rest):
    reader = wire.FrameReader(SIZE)
    try:
        read_all(reader, [wire.PREFIX.pack(wire.MAGIC, kind, length) + rest])
    except ProtocolError:
        return
    assert len(reader.buf) == SIZE and reader.staged() < wire.PREFIX_SIZE + wire.MAX_CONTROL
