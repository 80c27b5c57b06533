"""The direct path's exchange over a real loopback connection, one end driven by hand.

The common case (everything sent and received at once) runs in every collective test;
these cases drive the hand-overs to the general engine: a payload that arrives in parts
after the spin, a send the socket cannot take at once, a different header, an ABORT.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import numpy as np
import pytest

from ringdist import engine, wire
from ringdist.channel import Channel
from ringdist.errors import MismatchError, RingTimeoutError
from ringdist.engine import exchange


@pytest.fixture
def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    listener.close()
    ch = Channel(near, me=0, peer=1, group="g", role="mesh")
    far.settimeout(10)
    yield ch, far
    ch.close()
    far.close()


def run_exchange(ch: Channel, send: np.ndarray, recv: np.ndarray, header: wire.Header, **kw):
    """exchange() in a thread; returns (thread, errors list)."""
    poller = select.poll()
    poller.register(ch.fd, select.POLLIN)
    errors: list[BaseException] = []

    def body():
        try:
            exchange([ch], [memoryview(send).cast("B")], [memoryview(recv).cast("B")], header, outflows=[],
                     watched=[ch], timeout=kw.get("timeout", 10.0), op="all_gather", me=0, seq=0,
                     spin=kw.get("spin", 0.0), yield_core=False, poller=poller)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def recv_all(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "closed early"
        got += chunk
    return bytes(got)


def header_for(arr: np.ndarray, seq: int = 0) -> wire.Header:
    return wire.Header(wire.make_header("all_gather", seq, arr.dtype.str, arr.shape, path="direct"))


def test_a_payload_arriving_in_parts_after_the_spin_lands_whole(pair, monkeypatch):
    ch, far = pair
    handed_over = threading.Event()
    general = engine.run

    def run(*args, **kwargs):
        handed_over.set()
        return general(*args, **kwargs)

    monkeypatch.setattr(engine, "run", run)
    mine = np.arange(20000, dtype=np.float32)  # 80 KB: above the staged size, received in place
    theirs = (np.arange(20000) * 3).astype(np.float32)
    out = np.zeros_like(theirs)
    header = header_for(mine)
    thread, errors = run_exchange(ch, mine, out, header)
    stream = header.frame + wire.encode_prefix(wire.DATA, theirs.nbytes) + theirs.tobytes()
    cut = len(header.frame) + 8 + 1001  # the intro, then an odd part of the payload
    far.sendall(stream[:cut])
    assert handed_over.wait(10)  # the payload's first part came after the spin: the general engine waits for the rest
    far.sendall(stream[cut:cut + 30000])
    time.sleep(0.05)
    far.sendall(stream[cut + 30000:])
    sent = recv_all(far, len(header.frame) + 8 + mine.nbytes)
    thread.join(10)
    assert not thread.is_alive() and not errors, errors
    assert np.array_equal(out, theirs)
    assert sent[len(header.frame) + 8:] == mine.tobytes() and sent[:len(header.frame)] == header.frame


def test_a_send_larger_than_the_socket_takes_finishes_in_the_general_engine(pair):
    ch, far = pair
    # 6 MiB: more than the socket buffers hold, and more than the largest frame the engine cuts
    mine = np.arange(3 << 19, dtype=np.float32)
    theirs = np.full(3 << 19, 7, dtype=np.float32)
    out = np.zeros_like(theirs)
    header = header_for(mine)
    thread, errors = run_exchange(ch, mine, out, header)
    time.sleep(0.1)
    far.sendall(header.frame + wire.encode_prefix(wire.DATA, theirs.nbytes))
    sent = recv_all(far, len(header.frame) + 8 + mine.nbytes)  # read everything before sending the payload
    far.sendall(theirs.tobytes())
    thread.join(10)
    assert not thread.is_alive() and not errors, errors
    assert np.array_equal(out, theirs) and sent[len(header.frame) + 8:] == mine.tobytes()


def test_a_different_header_is_a_mismatch_naming_both_calls(pair):
    ch, far = pair
    mine = np.zeros(10, dtype=np.float32)
    out = np.zeros(10, dtype=np.float32)
    thread, errors = run_exchange(ch, mine, out, header_for(mine), spin=0.01)
    other = header_for(np.zeros(11, dtype=np.float32))
    far.sendall(other.frame + wire.encode_prefix(wire.DATA, 44) + bytes(44))
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], MismatchError)
    assert "shape=(10,)" in str(errors[0]) and "shape=(11,)" in str(errors[0])


def test_an_abort_from_the_peer_is_raised_with_its_cause(pair):
    ch, far = pair
    mine = np.zeros(10, dtype=np.float32)
    out = np.zeros(10, dtype=np.float32)
    thread, errors = run_exchange(ch, mine, out, header_for(mine), spin=0.01)
    far.sendall(wire.encode_map(wire.ABORT, {"error": "RingTimeoutError", "message": "rank 1 gave up",
                                              "origin": 1, "seq": 0}))
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RingTimeoutError)
    assert "aborted by rank 1: rank 1 gave up" in str(errors[0])


def test_a_silent_peer_times_out_naming_it(pair):
    ch, far = pair
    mine = np.zeros(10, dtype=np.float32)
    out = np.zeros(10, dtype=np.float32)
    thread, errors = run_exchange(ch, mine, out, header_for(mine), timeout=0.3)
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RingTimeoutError)
    assert "receiving from rank 1" in str(errors[0]) and "header not yet received" in str(errors[0])


def test_a_link_arriving_after_its_group_failed_reads_the_abort_then_the_close():
    # Past 8 ranks links open on first use: a peer may dial a rank whose collective already
    # failed. It must read why (the ABORT that rank sent its other peers), not just a close.
    from ringdist.channel import recv_control
    from ringdist.endpoint import InboxKey
    from ringdist.errors import PeerLostError

    # A lone surrogate in the text (an undecodable file name) goes escaped: as it was, the
    # ABORT could not be encoded, and its peers read only a closed connection.
    with _failed_and_other("rank 5 called all_max /d/\udcff", 6, 3, "rank 2") as (failed, dialer):
        sock = dialer.connect(failed.addresses, InboxKey("world", 2, "link", 0), time.monotonic() + 5,
                              "rank 6 of group 'world'", up=True)
        kind, fields, _ = recv_control(sock, time.monotonic() + 5)
        assert kind == wire.ABORT and fields["error"] == "MismatchError" and fields["seq"] == 3, fields
        assert fields["message"] == "rank 5 called all_max /d/\\udcff" and fields["origin"] == 6, fields
        with pytest.raises(PeerLostError):  # then the end
            recv_control(sock, time.monotonic() + 5)
        sock.close()
        # Another group's connections are filed as ever.
        other = dialer.connect(failed.addresses, InboxKey("world/0:0", 2, "link", 0), time.monotonic() + 5,
                               "rank 6 of group 'world/0:0'", up=True)
        failed.take(InboxKey("world/0:0", 2, "link", 0), time.monotonic() + 5, "waiting for rank 2").close()
        other.close()


def test_a_link_that_came_before_its_group_failed_but_was_not_taken_reads_the_abort():
    # Past 8 ranks over TCP (a rooted reduce that one rank called with another op): a lower rank
    # dialed its link and read it for the call's data; the higher rank failed before taking it
    # from its inbox, told the links it had, and that one nothing: its dialer waited out its
    # timeout. A failing group's untaken links get its ABORT, then the close.
    from ringdist import aborts, links
    from ringdist.channel import recv_control
    from ringdist.endpoint import Endpoint, InboxKey
    from ringdist.errors import PeerLostError

    failed = Endpoint(b"untaken link secret", ["127.0.0.1"], connect_timeout=5, label="rank 12")
    dialer = Endpoint(b"untaken link secret", ["127.0.0.1"], connect_timeout=5, label="rank 8")
    try:
        link = dialer.connect(failed.addresses, InboxKey("world", 8, links.KIND, 0), time.monotonic() + 5,
                              "rank 12 of group 'world'", up=True)
        message = dialer.connect(failed.addresses, InboxKey("world", 8, "p2p", 0), time.monotonic() + 5,
                                 "rank 12 of group 'world'", up=True)
        deadline = time.monotonic() + 5
        while len(failed.filed("world", links.KIND) + failed.filed("world", "p2p")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        failed.note_aborted("world", wire.encode_map(wire.ABORT, aborts.abort_fields(
            MismatchError("rank 0 called reduce with op min"), 0, 0)))
        kind, fields, _ = recv_control(link, time.monotonic() + 5)
        assert kind == wire.ABORT and fields["message"] == "rank 0 called reduce with op min", fields
        with pytest.raises(PeerLostError):  # then the end
            recv_control(link, time.monotonic() + 5)
        assert failed.filed("world", "p2p") == [8]  # a message connection is `_tell_pairs`' to take and tell
        link.close()
        message.close()
    finally:
        failed.close()
        dialer.close()


@contextlib.contextmanager
def _failed_and_other(message: str, rank: int, seq: int, other: str):
    """Two endpoints on loopback with one job secret: rank `rank`'s, whose group 'world' failed in
    call `seq` (MismatchError `message`, its ABORT noted), and `other`'s; both closed after."""
    from ringdist import aborts
    from ringdist.endpoint import Endpoint

    failed = Endpoint(b"late link secret", ["127.0.0.1"], connect_timeout=5, label=f"rank {rank}")
    peer = Endpoint(b"late link secret", ["127.0.0.1"], connect_timeout=5, label=other)
    try:
        failed.note_aborted("world", wire.encode_map(wire.ABORT, aborts.abort_fields(MismatchError(message), rank, seq)))
        yield failed, peer
    finally:
        failed.close()
        peer.close()


def test_a_rank_waiting_for_a_link_can_ask_whether_the_group_failed_at_its_dialer():
    # 12 ranks over TCP, a rooted reduce that one rank called with another op: a rank whose
    # partner failed before dialing it heard nothing (the partner tells the peers it is linked to,
    # which had finished their part of the call) and waited out its timeout. It asks now.
    from ringdist import aborts, channel

    def ask(group: str):
        sock = waiting.ask(failed.addresses, group, 6, f"rank 4 of group {group!r}", 2.0)
        assert sock is not None
        return sock

    with _failed_and_other("rank 2 called reduce", 4, 0, "rank 6") as (failed, waiting):
        with ask("world") as sock:
            told = channel.read_abort(sock, time.monotonic() + 2.0)
        assert told is not None and told["error"] == "MismatchError" and told["seq"] == 0, told
        assert told["message"] == "rank 2 called reduce" and told["origin"] == 4, told
        # A group that has not failed there: nothing told yet, nothing left in its inbox, and
        # the ask kept open: answered when that group fails there too.
        sock = ask("world/0:0")
        assert channel.read_abort(sock, time.monotonic() + 0.3) is None
        assert not failed._inbox, failed._inbox
        assert [len(kept) for kept in failed._asks.values()] == [1], failed._asks
        failed.note_aborted("world/0:0", wire.encode_map(wire.ABORT, aborts.abort_fields(
            MismatchError("rank 3 called scan"), 4, 7)))
        told = channel.read_abort(sock, time.monotonic() + 2.0)
        sock.close()
        assert told is not None and told["message"] == "rank 3 called scan" and told["seq"] == 7, told
        assert not failed._asks, failed._asks


def test_an_ask_kept_open_is_closed_when_its_connection_is_made_and_let_go_when_its_asker_closes():
    from ringdist import channel

    with _failed_and_other("rank 2 called reduce", 4, 0, "rank 6") as (failed, waiting):
        def ask(rank: int):
            sock = waiting.ask(failed.addresses, "world/0:0", rank, "rank 4 of group 'world/0:0'", 2.0)
            assert sock is not None
            return sock

        first, second, third = ask(6), ask(6), ask(5)
        deadline = time.monotonic() + 5
        while sum(len(kept) for kept in failed._asks.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted((where, len(kept)) for where, kept in failed._asks.items()) == \
            [(("world/0:0", 5, 0), 1), (("world/0:0", 6, 0), 2)], failed._asks
        failed.note_dialing("world/0:0", 6)  # the message connection to rank 6 is coming: keep waiting
        for sock in (first, second):
            assert channel.read_abort(sock, time.monotonic() + 2.0) is None  # closed with nothing
            sock.close()
        assert list(failed._asks) == [("world/0:0", 5, 0)], failed._asks
        third.close()  # its asker's wait is over: let go when the next ask is kept
        fourth = ask(4)
        while ("world/0:0", 4, 0) not in failed._asks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(failed._asks) == [("world/0:0", 4, 0)], failed._asks
        failed.discard("world/0:0")  # the group closed here: its asks are closed
        assert channel.read_abort(fourth, time.monotonic() + 2.0) is None and not failed._asks
        fourth.close()
