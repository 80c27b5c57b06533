"""Asks (`asking`): a rank waiting for a peer's connection asks whether the group failed there,
and the peer keeps the ask to answer it when it does. What the asks must never do: lose a message
sent before a failure, stop a wait that would have ended well, or pile up at the rank asked.
Ranks are threads over real sockets (`harness`)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ringdist as rd
from harness import run_ranks

CAUSE = "aborted by rank 0: TypeError: rank 0: all_sum: dtype <U1 is not numeric or bool"


def _break(g: rd.Group) -> None:
    with pytest.raises(TypeError):
        rd.all_sum(np.array(["a"]), group=g)


def _sent(call) -> str:
    """A send's outcome: "returned" once it returns (the array it gives back is not compared), or its error."""
    def ran() -> None:
        call()
    return _outcome(ran)


def _outcome(call) -> str:
    try:
        got = call()
        return got.tolist() if isinstance(got, np.ndarray) else "returned"
    except rd.RingError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_message_issued_before_the_break_is_received_or_its_send_fails(monkeypatch):
    """Rank 0's async send is making its connection when its group breaks (rank 1's ask is kept
    at rank 0 by then, and rank 1's acceptor is slow to file the connection). The ask is told to
    keep waiting from the moment the dial begins, and a send whose group broke while it dialed
    puts the ABORT on its connection and fails: never a send reported done whose receive raised."""
    from ringdist.endpoint import Endpoint

    broken = threading.Event()
    real_connect, real_file = Endpoint.connect, Endpoint._file

    def connect(self, addresses, key, *args, **kwargs):
        sock = real_connect(self, addresses, key, *args, **kwargs)
        if key.kind == "p2p":
            assert broken.wait(20)  # the break lands once the connection is made, before it is used
        return sock

    def file(self, conn, hello, addr):
        if hello.get("kind") == "p2p":
            assert broken.wait(20)
            time.sleep(0.3)
        return real_file(self, conn, hello, addr)

    monkeypatch.setattr(Endpoint, "connect", connect)
    monkeypatch.setattr(Endpoint, "_file", file)

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(0.8)  # rank 1 has asked (after 0.5 s), and its ask is kept here
            w = rd.send(np.arange(2.0), 1, group=g, async_op=True)
            time.sleep(0.1)
            _break(g)
            broken.set()
            sent = _sent(w.wait)
            time.sleep(1.0)
            return sent
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=20))

    sent, got, _ = run_ranks(3, rank, shm=False)
    assert sent.startswith("GroupBrokenError: rank 0: group 'world' cannot run send"), sent
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


@pytest.mark.parametrize("broken", [True, False], ids=["broken", "healthy"])
def test_a_message_sent_before_the_break_is_received_after_the_sender_closes_its_group(monkeypatch, broken):
    """Rank 0 sends, breaks its group (or not) and closes it before rank 1's acceptor files the
    message's connection, and rank 1 asks meanwhile: rank 0 still answers "keep waiting" (it
    dialed rank 1), not the ABORT nor that it closed the group, so the message is received."""
    from ringdist import channel
    from ringdist.endpoint import Endpoint

    closed, asked = threading.Event(), threading.Event()
    real_ask, real_read, real_file = Endpoint.ask, channel.read_abort, Endpoint._file

    def ask(self, *args, **kwargs):
        assert closed.wait(20)
        return real_ask(self, *args, **kwargs)

    def read_abort(*args, **kwargs):  # the receive reads the answer to its ask
        try:
            return real_read(*args, **kwargs)
        finally:
            asked.set()

    def file(self, conn, hello, addr):
        if hello.get("kind") == "p2p":
            assert asked.wait(20)
        return real_file(self, conn, hello, addr)

    monkeypatch.setattr(Endpoint, "ask", ask)
    monkeypatch.setattr(channel, "read_abort", read_abort)
    monkeypatch.setattr(Endpoint, "_file", file)

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(0.2)
            rd.send(np.arange(2.0), 1, group=g)
            if broken:
                _break(g)
            g.close()
            closed.set()
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))

    assert run_ranks(3, rank, shm=False)[1] == [0.0, 1.0]


def test_a_rank_that_closed_a_group_tells_a_later_sender_and_a_receiver_waiting_for_it():
    """Rank 0 closes a group that rank 1 still uses. Rank 1's first message to it went into a
    connection rank 0 closed after the handshake, and the send returned (the message lost); a
    receive from it waited out its whole timeout. Now both raise PeerLostError, saying so."""
    said = "rank 0 closed group"

    def rank(g: rd.Group):
        found = []
        for receive in (False, True):
            sub = g.split(0)
            if g.rank() == 0:
                sub.close()
            rd.barrier(group=g)
            if g.rank() == 1:
                if receive:
                    found.append(_outcome(lambda: rd.recv(2, np.float64, 0, group=sub, timeout=30)))
                else:
                    found.append(_sent(lambda: rd.send(np.arange(2.0), 0, group=sub, timeout=30)))
                    found.append(_sent(lambda: rd.send(np.arange(2.0), 0, group=sub, timeout=30)))
            rd.barrier(group=g)
            sub.close()
        return found

    sent, again, received = run_ranks(2, rank, shm=False)[1]
    assert sent.startswith("PeerLostError: rank 1: lost rank 0 of group") and said in sent, sent
    assert again.startswith("PeerLostError: ") and said in again, again
    assert received.startswith("PeerLostError: rank 1: recv aborted by rank 0: ") and said in received, received


@pytest.mark.parametrize("async_op", [False, True], ids=["blocking", "async"])
def test_a_receive_whose_ask_cannot_get_a_thread_still_receives(monkeypatch, async_op):
    """No thread to be had for an ask (a process limit; the interpreter exiting): the wait goes
    on without it (it did kill the progress thread, failing every async job)."""
    from ringdist import asking

    real_start = threading.Thread.start

    def start(self, *args, **kwargs):
        if self.name.startswith("ringdist-ask"):
            raise RuntimeError("can't start new thread")
        return real_start(self, *args, **kwargs)

    monkeypatch.setattr(asking.threading.Thread, "start", start)

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(1.5)
            rd.send(np.arange(2.0), 1, group=g)  # late, but it comes
            return None
        if g.rank() == 2:
            return None
        if async_op:
            return _outcome(rd.recv(2, np.float64, 0, group=g, timeout=10, async_op=True).wait)
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=10))

    assert run_ranks(3, rank, shm=False)[1] == [0.0, 1.0]


@pytest.mark.parametrize("message_first", [False, True], ids=["no-message", "message-first"])
def test_a_link_wait_hears_that_its_dialer_failed(message_first):
    """Rank 5 of 12 waits for rank 0's link (opened on first use past 8 ranks) in a call rank 0
    failed before dialing it. Its ask brings rank 0's ABORT, also where rank 0 has made its
    message connection to rank 5 (a message wait's "keep waiting" is not a link wait's)."""
    def rank(g: rd.Group):
        r = g.rank()
        if r == 0:
            if message_first:
                rd.send(np.arange(2.0), 5, group=g)
            _break(g)  # call 0 fails here, before any link to rank 5
            time.sleep(3.0)
            return None
        if r != 5:
            time.sleep(3.5)
            return None
        if message_first:
            rd.recv(2, np.float64, 0, group=g)
        time.sleep(0.3)
        g.next_header("all_sum", np.ones(1))  # rank 5 is in call 0 ...
        try:
            g.link(0, timeout=30.0)  # ... waiting for rank 0 to dial its link
            return "linked"
        except rd.RingError as exc:
            return f"{type(exc).__name__}: {exc}"

    got = run_ranks(12, rank, shm=False, timeout=60)[5]
    assert got.startswith("RingError: rank 5: all_sum aborted by rank 0: TypeError: rank 0: all_sum: dtype <U1"), got


def test_the_asks_for_links_are_let_go_once_the_links_are_made():
    """15 ranks wait for rank 0's link, 2 s late, and ask: rank 0 keeps none once it has dialed them."""
    def rank(g: rd.Group):
        g.next_header("all_sum", np.ones(1))
        if g.rank() == 0:
            time.sleep(2.0)
            for p in range(1, g.size()):
                g.link(p, timeout=20)
            return sum(len(kept) for kept in g._endpoint._asks.values())
        g.link(0, timeout=20)
        return None

    assert run_ranks(16, rank, shm=False, timeout=120)[0] == 0


def _rank_0_sends_from_threads(g: rd.Group, sends: dict[str, np.ndarray], gap: float = 0.2) -> dict[str, str]:
    """Rank 0 sends each of `sends` to rank 1 from a thread of its own (`gap` s apart, in
    order), then breaks its group; each send's outcome."""
    out: dict[str, str] = {}
    threads = []
    for name, x in sends.items():
        t = threading.Thread(target=lambda name=name, x=x: out.setdefault(name, _sent(
            lambda: rd.send(x, 1, group=g, timeout=20))))
        t.start()
        threads.append(t)
        time.sleep(gap)
    _break(g)
    for t in threads:
        t.join(30)
    return out


def test_a_send_waiting_for_its_turn_when_the_group_breaks_sends_nothing_behind_the_abort(monkeypatch):
    """Rank 0's first send dials when the group breaks (it puts the ABORT on its new connection and
    fails); a second send, started before the break, waits for the pair's turn. It must not write
    its message behind the ABORT (it returned, and its receiver raised)."""
    from ringdist.endpoint import Endpoint

    broken = threading.Event()
    real_connect = Endpoint.connect

    def connect(self, addresses, key, *args, **kwargs):
        sock = real_connect(self, addresses, key, *args, **kwargs)
        if key.kind == "p2p":
            assert broken.wait(20)
        return sock

    monkeypatch.setattr(Endpoint, "connect", connect)

    def rank(g: rd.Group):
        if g.rank() == 0:
            threading.Timer(0.6, broken.set).start()  # once the group has broken (0.4 s)
            out = _rank_0_sends_from_threads(g, {"first": np.arange(2.0), "second": np.arange(2.0) + 10})
            time.sleep(1.0)
            return out
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=20))

    sent, got, _ = run_ranks(3, rank, shm=False)
    for name in ("first", "second"):
        assert sent[name].startswith("GroupBrokenError: rank 0: group 'world' cannot run send"), sent
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


def test_a_send_that_finds_its_group_broken_before_the_pairs_are_told_still_tells_its_receiver(monkeypatch):
    """Rank 0's send has dialed when its group breaks, and looks at the group between the break
    being marked and the pairs being told, then holds its pair's turn while they are told (so
    `_tell_pairs` passes its connection): the break's ABORT is there for the send to put on its
    connection (none was: its receiver was told nothing, and waited out its timeout)."""
    from ringdist.comm import Comm
    from ringdist.endpoint import Endpoint

    failing, looked, told = threading.Event(), threading.Event(), threading.Event()
    sender: list[threading.Thread] = []
    real_connect, real_tell_pairs, real_check = Endpoint.connect, Comm._tell_pairs, Comm.check_usable

    def connect(self, addresses, key, *args, **kwargs):
        sock = real_connect(self, addresses, key, *args, **kwargs)
        if key.kind == "p2p":
            assert failing.wait(20)  # the group is marked broken; its pairs are not told yet
        return sock

    def tell_pairs(self, frame):
        if self.rank() == 0 and not failing.is_set():
            failing.set()
            assert looked.wait(20)  # the send has looked, and holds its turn
            try:
                return real_tell_pairs(self, frame)
            finally:
                told.set()
        return real_tell_pairs(self, frame)

    def check_usable(self, op):
        if failing.is_set() and sender and threading.current_thread() is sender[0] and not looked.is_set():
            looked.set()
            assert told.wait(20)  # (the send raises, giving its turn up, once the pairs are told)
        return real_check(self, op)

    monkeypatch.setattr(Endpoint, "connect", connect)
    monkeypatch.setattr(Comm, "_tell_pairs", tell_pairs)
    monkeypatch.setattr(Comm, "check_usable", check_usable)

    def rank(g: rd.Group):
        if g.rank() == 0:
            out: dict[str, str] = {}
            t = threading.Thread(target=lambda: out.setdefault("sent", _sent(
                lambda: rd.send(np.arange(2.0), 1, group=g, timeout=20))))
            sender.append(t)
            t.start()
            time.sleep(0.3)
            _break(g)
            t.join(30)
            time.sleep(1.0)
            return out["sent"]
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=10))

    sent, got, _ = run_ranks(3, rank, shm=False)
    assert sent.startswith("GroupBrokenError: rank 0: group 'world' cannot run send"), sent
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


@pytest.mark.parametrize("how", ["blocking", "async", "object"])
def test_an_any_source_receive_asks_the_senders_whose_connection_has_not_come(how):
    """Rank 1 takes messages from any rank; rank 2 has sent it one (its connection is there),
    rank 0 never has, and breaks its group. The any-source receive asks rank 0 too, and raises
    the cause, instead of waiting out its timeout."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(1.0)
            _break(g)
            time.sleep(2.0)
            return None
        if g.rank() == 2:
            rd.send(np.arange(2.0), 1, group=g)
            time.sleep(3.0)
            return None
        first = rd.recv_any(2, np.float64, group=g, timeout=30)[0]
        if how == "async":
            return first, _outcome(rd.recv_any(2, np.float64, group=g, timeout=30, async_op=True).wait)
        if how == "object":
            return first, _outcome(lambda: rd.recv_object_any(group=g, timeout=30))
        return first, _outcome(lambda: rd.recv_any(2, np.float64, group=g, timeout=30))

    first, got = run_ranks(3, rank, shm=False)[1]
    assert first == 2
    op = "recv_object_any" if how == "object" else "recv_any"
    assert got.startswith(f"RingError: rank 1: {op} " + CAUSE), got


@pytest.mark.parametrize("queued", ["thread", "async"])
def test_a_send_queued_behind_a_message_under_way_when_the_group_breaks_tells_the_receiver(queued):
    """Rank 0's 64 MiB send holds the pair's turn (rank 1 is not reading yet) when a second send
    to rank 1, queued behind it (another thread's, or an async one in the progress thread's
    lane), and then the group's break come. The big message goes whole; the queued send sends
    nothing, puts the ABORT on the connection and fails; rank 1 gets the big message, then the
    cause (after an async one it waited out its timeout: nothing told it)."""
    big = 64 << 20

    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.send(np.arange(2.0), 1, group=g)  # the pair's connection is made
            w = rd.send(np.zeros(big, np.uint8), 1, group=g, timeout=30, async_op=True)
            time.sleep(0.3)
            out: dict[str, str] = {}
            if queued == "async":
                queued_send = rd.send(np.arange(2.0) + 5, 1, group=g, async_op=True, timeout=30)
            else:
                t = threading.Thread(target=lambda: out.setdefault("queued", _sent(
                    lambda: rd.send(np.arange(2.0) + 5, 1, group=g, timeout=30))))
                t.start()
            time.sleep(0.3)
            _break(g)
            if queued == "async":
                out["queued"] = _sent(queued_send.wait)
            else:
                t.join(30)
            out["big"] = _sent(w.wait)
            time.sleep(3.0)
            return out
        if g.rank() == 2:
            return None
        rd.recv(2, np.float64, 0, group=g)
        time.sleep(1.5)
        whole = _outcome(lambda: int(rd.recv(big, np.uint8, 0, group=g, timeout=30).sum()))
        return whole, _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=20))

    sent, (whole, got), _ = run_ranks(3, rank, shm=False, timeout=90)
    assert sent["queued"].startswith("GroupBrokenError: rank 0: group 'world' cannot run send"), sent
    assert whole == "returned", whole
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


def test_a_refused_send_passes_on_the_cause_found_for_a_lost_peer():
    """The progress thread breaks the group for a lost peer (its write to rank 1 failed, say)
    while rank 1's ABORT, the real cause, waits on this rank's connection to it. A send queued
    before the break (behind a 64 MiB one to rank 2) is refused after it, and passes on that
    cause, as the group's connections are told it, not the lost peer."""
    from ringdist import runners
    from ringdist.errors import PeerLostError

    big = 64 << 20

    def rank(g: rd.Group):
        if g.rank() == 1:
            time.sleep(0.5)
            _break(g)
            return None
        if g.rank() == 0:
            rd.send(np.arange(2.0), 2, group=g)
            w = rd.send(np.zeros(big, np.uint8), 2, group=g, timeout=30, async_op=True)
            queued = rd.send(np.arange(2.0), 2, group=g, timeout=30, async_op=True)
            time.sleep(1.0)  # rank 1's ABORT has come on this rank's connection to it
            lost = PeerLostError("rank 0: lost rank 1: connection reset")
            runners.break_group(g, "send", [g.links.peers[1]], [], lost)
            return _sent(queued.wait), _sent(w.wait)
        rd.recv(2, np.float64, 0, group=g)
        time.sleep(1.5)
        whole = _outcome(lambda: int(rd.recv(big, np.uint8, 0, group=g, timeout=30).sum()))
        return whole, _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=20))

    (refused, sent), _, (whole, got) = run_ranks(3, rank, shm=False)
    assert refused.startswith("GroupBrokenError: rank 0: group 'world' cannot run send"), refused
    assert sent == "returned" and whole == "returned", (sent, whole)
    assert "aborted by rank 1: TypeError: rank 1: all_sum: dtype <U1" in got, got


def test_a_receive_whose_ask_was_kept_hears_when_its_sender_closes_the_group():
    """Rank 0 waits long enough to have asked (its ask kept by ranks 1 and 2) before they close
    the group: the kept asks are answered as they close. A receive from rank 2 raises that it
    closed the group, an any-source receive that no rank is left, each at the close, not at its
    timeout."""
    def rank(g: rd.Group):
        found = []
        for any_source in (False, True):
            sub = g.split(0)
            if g.rank() == 0:
                began = time.monotonic()
                if any_source:
                    found.append(_outcome(lambda: rd.recv_any(2, np.float64, group=sub, timeout=30)))
                else:
                    found.append(_outcome(lambda: rd.recv(2, np.float64, 2, group=sub, timeout=30)))
                found.append(time.monotonic() - began < 20)
            else:
                time.sleep(3.0)  # (past the first asks: 0.5 s from one rank, 2 s from any)
                sub.close()
            rd.barrier(group=g)
            sub.close()
        return found

    one, one_early, any_, any_early = run_ranks(3, rank, shm=False)[0]
    assert one.startswith("PeerLostError: rank 0: recv aborted by rank 2: rank 2 closed group"), one
    assert any_.startswith("PeerLostError: rank 0: recv_any in group ") and "no rank is left to send" in any_, any_
    assert one_early and any_early
