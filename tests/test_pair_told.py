"""A group that breaks on one rank reaches the ranks it exchanges messages with.

A broken group's ABORT goes on its collectives' connections, which a rank waiting in a receive
or a send does not read. So it also goes on every message connection of the group's pairs with
no message under way in the breaking rank's direction (an ABORT inside a message's frames would
corrupt the stream), and a receive still waiting for its sender's connection asks the sender
whether the group failed there. Either way the waiting rank raises the cause at once, instead
of waiting out its timeout. Ranks are threads over real sockets (`harness`).
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import ringdist as rd
from harness import run_ranks

CAUSE = "aborted by rank 0: TypeError: rank 0: all_sum: dtype <U1 is not numeric or bool"


def _break(g: rd.Group) -> None:
    """Rank 0 breaks the group: a collective refused for its argument (its peers hear of it on the
    group's connections, which the waiting ranks here do not read)."""
    with pytest.raises(TypeError):
        rd.all_sum(np.array(["a"]), group=g)


def _outcome(call) -> str:
    try:
        call()
        return "returned"
    except rd.RingError as exc:
        return f"{type(exc).__name__}: {exc}"


def _send_break_and_receive_twice(ready, done) -> tuple[str, str]:
    """Rank 0, once `ready()` is true, sends rank 1 a message and breaks the group, then calls
    `done()`; rank 1 receives twice. Rank 1's two outcomes."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            assert ready()
            rd.send(np.arange(2.0), 1, group=g)
            _break(g)
            done()
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        first = _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))
        return first, _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))

    return run_ranks(3, rank, shm=False)[1]


@pytest.mark.parametrize("shm", [False, True], ids=["tcp", "shm"])
def test_a_receive_waiting_on_an_idle_pair_hears_its_sender_s_group_break(shm):
    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.send(np.arange(2.0), 1, group=g)  # the pair's connection is up, and idle after this
            time.sleep(0.2)
            _break(g)
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        first = rd.recv(2, np.float64, 0, group=g).tolist()
        return first, _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))

    first, second = run_ranks(3, rank, shm=shm)[1]
    assert first == [0.0, 1.0]
    assert second.startswith("RingError: rank 1: recv " + CAUSE), second


def test_an_async_receive_on_an_idle_pair_hears_it_too():
    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.send(np.arange(2.0), 1, group=g)
            time.sleep(0.2)
            _break(g)
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        rd.recv(2, np.float64, 0, group=g)
        w = rd.recv(2, np.float64, 0, group=g, timeout=30, async_op=True)
        return _outcome(w.wait)

    got = run_ranks(3, rank, shm=False)[1]
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


def test_messages_sent_before_the_break_arrive_first():
    def rank(g: rd.Group):
        if g.rank() == 0:
            for k in range(3):
                rd.send(np.full(4, float(k)), 1, group=g)
            _break(g)
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        time.sleep(0.3)  # the ABORT is behind the three messages by now
        got = [rd.recv(4, np.float64, 0, group=g).tolist() for _ in range(3)]
        return got, _outcome(lambda: rd.recv(4, np.float64, 0, group=g, timeout=30))

    got, after = run_ranks(3, rank, shm=False)[1]
    assert got == [[float(k)] * 4 for k in range(3)]
    assert after.startswith("RingError: rank 1: recv " + CAUSE), after


def test_a_send_blocked_on_a_rank_whose_group_breaks_hears_it():
    """Rank 1's 128 MiB send fills the connection's buffers and waits for rank 0 to read; rank 0
    breaks the group instead (it has not taken the connection yet: it takes it to tell it)."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(0.5)
            _break(g)
            time.sleep(2.0)
            return None
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.send(np.ones(1 << 24), 0, group=g, timeout=30))

    got = run_ranks(3, rank, shm=False)[1]
    assert got.startswith("RingError: rank 1: send " + CAUSE), got


def test_a_receive_waiting_for_a_connection_never_made_asks_its_sender():
    def rank(g: rd.Group):
        if g.rank() == 0:
            _break(g)
            time.sleep(2.0)
            return None
        if g.rank() == 2:
            return None
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))

    got = run_ranks(3, rank, shm=False)[1]
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


def test_a_message_under_way_is_not_cut_by_the_break():
    """Rank 0's 64 MiB message is under way when its group breaks: its stream is left whole (no
    ABORT inside its frames), and rank 1, reading slowly, gets it intact."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            w = rd.send(np.arange(1 << 23, dtype=np.float64), 1, group=g, async_op=True, timeout=30)
            time.sleep(0.2)
            _break(g)
            w.wait()
            time.sleep(0.5)
            return None
        if g.rank() == 2:
            return None
        time.sleep(0.6)
        got = rd.recv(1 << 23, np.float64, 0, group=g, timeout=30)
        return bool(np.array_equal(got, np.arange(1 << 23, dtype=np.float64)))

    assert run_ranks(3, rank, shm=False)[1] is True


def test_a_receive_that_hears_by_asking_breaks_its_group_and_passes_it_on():
    """Rank 1 learns of rank 0's break by asking (no connection between them): its group breaks
    too, as when it reads an ABORT, so rank 2, waiting for rank 1's message, hears it by asking
    rank 1 in turn."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            _break(g)
            time.sleep(3.0)
            return None
        if g.rank() == 1:
            first = _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))
            then = _outcome(lambda: rd.send(np.ones(2), 2, group=g))
            time.sleep(2.0)
            return first, then
        return _outcome(lambda: rd.recv(2, np.float64, 1, group=g, timeout=30))

    _, (first, then), third = run_ranks(3, rank, shm=False)
    assert first.startswith("RingError: rank 1: recv " + CAUSE), first
    assert then.startswith("GroupBrokenError: rank 1: group 'world' cannot run send"), then
    assert third.startswith("RingError: rank 2: recv " + CAUSE), third


def test_a_message_whose_connection_comes_while_its_receive_asks_is_received(monkeypatch):
    """The sender connects, sends and breaks its group while the waiting receive is asking it
    whether the group failed: the answer is yes, but the connection has come, and it carries
    the message before the ABORT. The message is received."""
    import threading
    from ringdist.endpoint import Endpoint

    asking, sent = threading.Event(), threading.Event()
    real = Endpoint.ask

    def ask(self, *args, **kwargs):
        if not asking.is_set():
            asking.set()
            assert sent.wait(20)  # rank 0 sends and breaks while this ask is under way
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Endpoint, "ask", ask)

    first, second = _send_break_and_receive_twice(lambda: asking.wait(20), sent.set)
    assert first == "returned", first
    assert second.startswith("RingError: rank 1: recv " + CAUSE), second


def test_a_message_cut_short_by_its_own_failure_gets_no_abort_inside_its_frame():
    """Rank 0's 64 MiB async send times out part-way (rank 1 reads nothing yet) while an async
    collective of the group holds its connections; the collective's failure then tells the pairs.
    The cut message's connection is left as it is (marked cut, no ABORT written after the part
    that went): rank 1 reads that part and then times out."""
    n = 1 << 23

    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.send(np.zeros(1), 1, group=g)  # the pair's connection is up
            held = rd.all_sum(np.ones(4), group=g, async_op=True)
            sending = rd.send(np.arange(n, dtype=np.float64), 1, group=g, async_op=True, timeout=1.0)
            outcomes = [_outcome(sending.wait), _outcome(held.wait)]
            ch = g._p2p_out[1][0]
            time.sleep(4.0)
            return outcomes, ch.cut, ch.aborted
        time.sleep(3.0)
        if g.rank() == 2:
            return _outcome(lambda: rd.all_sum(np.ones(4), group=g))
        rd.recv(1, np.float64, 0, group=g)
        return _outcome(lambda: rd.recv(n, np.float64, 0, group=g, timeout=2))

    (outcomes, cut, aborted), late, _ = run_ranks(3, rank, shm=False, timeout=90)
    assert outcomes[0].startswith("RingTimeoutError: rank 0: send made no progress"), outcomes
    assert cut and not aborted  # rank 0 knows its frame is cut, and wrote nothing after it
    assert late.startswith("RingTimeoutError: rank 1: recv made no progress"), late
    assert re.search(r"\(\d+ of 67108864 bytes\)$", late), late


def test_a_message_sent_before_the_break_is_received_when_its_connection_is_filed_after_the_ask(monkeypatch):
    """The sender's connection is made (WELCOME sent) but filed at the receiver only after the
    receive has asked the sender, which has sent its message and broken its group meanwhile: the
    sender answers 'keep waiting' to a rank it has dialed, and the message is received, then the
    ABORT behind it."""
    import threading
    from ringdist import channel
    from ringdist.endpoint import Endpoint

    broken, asked = threading.Event(), threading.Event()
    real_ask, real_read, real_file = Endpoint.ask, channel.read_abort, Endpoint._file

    def ask(self, *args, **kwargs):
        assert broken.wait(20)
        return real_ask(self, *args, **kwargs)

    def read_abort(*args, **kwargs):  # the receive reads the sender's answer to its ask
        try:
            return real_read(*args, **kwargs)
        finally:
            asked.set()

    def file(self, conn, hello, addr):
        if hello.get("kind") == "p2p":
            assert asked.wait(20)  # filed only once the receive has had its answer
        return real_file(self, conn, hello, addr)

    monkeypatch.setattr(Endpoint, "ask", ask)
    monkeypatch.setattr(channel, "read_abort", read_abort)
    monkeypatch.setattr(Endpoint, "_file", file)

    first, second = _send_break_and_receive_twice(lambda: time.sleep(0.2) is None, broken.set)  # (rank 1 waits)
    assert first == "returned", first
    assert second.startswith("RingError: rank 1: recv " + CAUSE), second


def test_an_abort_tells_the_connections_with_no_frame_to_finish_first():
    """A failed message's frame may take the whole ABORT budget to finish (its receiver stopped
    reading): the group's other connections are told before it is tried, over real sockets."""
    import socket

    from ringdist import aborts
    from ringdist.channel import Channel

    def tcp_pair() -> tuple[socket.socket, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            a = socket.create_connection(lsock.getsockname())
            b, _ = lsock.accept()
        return a, b

    pairs = [tcp_pair() for _ in range(3)]
    chans = [Channel(a, me=0, peer=k + 1, group="world", role="right") for k, (a, _) in enumerate(pairs)]
    order = []

    class Stuck:  # a message whose receiver reads nothing: its frame never finishes
        ch = chans[0]

        def finish_frame(self, timeout: float) -> None:
            order.append("finish")
            raise rd.RingTimeoutError("its receiver reads nothing")

    real_tell = aborts.tell

    def tell(ch, frame, deadline):
        order.append(f"tell {ch.peer}")
        real_tell(ch, frame, deadline)

    try:
        aborts.tell = tell
        aborts.abort([Stuck()], chans, RuntimeError("x"), 0, 3)
    finally:
        aborts.tell = real_tell
        for a, b in pairs:
            a.close()
            b.close()
    assert order == ["tell 2", "tell 3", "finish", "tell 1"], order
    assert chans[0].cut and not chans[0].aborted  # the stuck one: cut, no ABORT inside its frame
    assert chans[1].aborted and chans[2].aborted


@pytest.mark.parametrize("how", ["async", "behind-async"])
def test_a_receive_on_the_progress_thread_waiting_for_a_connection_never_made_asks_its_sender(how):
    """An async receive (or a blocking one queued behind async work) waiting for a connection
    its sender never made asks, as a blocking one does, instead of waiting out its timeout."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            _break(g)
            time.sleep(2.0)
            return None
        if g.rank() == 2:
            return None
        if how == "async":
            w = rd.recv(2, np.float64, 0, group=g, timeout=30, async_op=True)
            return _outcome(w.wait)
        ahead = rd.recv(1, np.float64, 2, tag=5, group=g, timeout=30, async_op=True)  # never sent
        got = _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))
        return got, _outcome(ahead.wait)

    got = run_ranks(3, rank, shm=False)[1]
    if how == "behind-async":
        got, ahead = got
        assert ahead.startswith("GroupBrokenError: rank 1: "), ahead  # its group broke meanwhile
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got


def _counting_asks(monkeypatch) -> dict[int, int]:
    """Asks made, by the asking rank (ranks are threads of this process)."""
    from ringdist.endpoint import Endpoint

    asks: dict[int, int] = {}
    real = Endpoint.ask

    def ask(self, addresses, group, me, *args, **kwargs):
        asks[me] = asks.get(me, 0) + 1
        return real(self, addresses, group, me, *args, **kwargs)

    monkeypatch.setattr(Endpoint, "ask", ask)
    return asks


@pytest.mark.parametrize("async_op", [False, True], ids=["blocking", "async"])
def test_an_ask_is_kept_and_answered_when_the_sender_fails_later(monkeypatch, async_op):
    """The sender keeps the receive's ask open and answers it when its group breaks, 2.5 s into
    the wait: one ask, not one every 1-2 s until the break."""
    asks = _counting_asks(monkeypatch)

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(2.5)
            _break(g)
            time.sleep(1.0)
            return None
        if g.rank() == 2:
            return None
        if async_op:
            return _outcome(rd.recv(2, np.float64, 0, group=g, timeout=30, async_op=True).wait)
        return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))

    got = run_ranks(3, rank, shm=False)[1]
    assert got.startswith("RingError: rank 1: recv " + CAUSE), got
    assert asks == {1: 1}, asks


def test_a_chain_of_receives_hears_a_break_through_the_asks_kept(monkeypatch):
    """Ranks 1-3 each wait for the message of the rank before (no connection between them yet);
    rank 0's group breaks 1.5 s in. Each rank hears by its one ask, kept by the rank before, and
    passes it on: every one raises the cause."""
    asks = _counting_asks(monkeypatch)

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(1.5)
            _break(g)
            time.sleep(1.0)
            return None
        return _outcome(lambda: rd.recv(2, np.float64, g.rank() - 1, group=g, timeout=30))

    got = run_ranks(4, rank, shm=False)[1:]
    for r, outcome in enumerate(got, 1):
        assert outcome.startswith(f"RingError: rank {r}: recv " + CAUSE), outcome
    assert asks == {1: 1, 2: 1, 3: 1}, asks


@pytest.mark.parametrize("then", ["send", "recv"])
def test_a_rank_told_of_a_break_on_another_pair_raises_it_at_its_next_message(then):
    """Rank 1 cannot take rank 0's message (another dtype) and tells rank 0 on their connection.
    Rank 0's next call was to rank 2: it looked at that pair's connection alone, went on (its
    send returned, or its receive took rank 2's message), and rank 2, waiting on rank 0, never
    heard. Now rank 0's next message raises the cause, and rank 2 hears it from rank 0."""
    told = threading.Event()
    cause = "aborted by rank 1: rank 1 expected recv(shape=(4,), dtype=float64) from rank 0 but rank 0 sent"

    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.send(np.arange(4, dtype=np.float32), 1, group=g)
            assert told.wait(30)
            time.sleep(0.2)  # (rank 1's ABORT on their connection reaches this rank's socket)
            if then == "send":
                return _outcome(lambda: rd.send(np.ones(2), 2, group=g))
            return _outcome(lambda: rd.recv(2, np.float64, 2, group=g, timeout=30))
        if g.rank() == 1:
            try:
                return _outcome(lambda: rd.recv(4, np.float64, 0, group=g, timeout=30))
            finally:
                told.set()
        if then == "send":
            return _outcome(lambda: rd.recv(2, np.float64, 0, group=g, timeout=30))
        return _outcome(lambda: rd.send(np.ones(2), 0, group=g, timeout=30))

    zero, one, two = run_ranks(3, rank, shm=False)
    assert one.startswith("MismatchError: rank 1 expected recv(shape=(4,), dtype=float64)"), one
    assert zero.startswith(f"MismatchError: rank 0: {then} {cause}"), zero
    if then == "send":  # (a send to rank 0 may have gone into the kernel's buffer before the break)
        assert two.startswith("MismatchError: rank 2: recv " + cause), two


def test_threads_sending_to_several_ranks_at_once_look_at_what_came_back_one_at_a_time():
    """Four threads of rank 0 each send to one of ranks 1-4 on one group: each message looks at
    what came back on the group's connections first (`Comm._check_told`), and a poll object
    takes one thread at a time ("RuntimeError: concurrent poll() invocation" killed the threads,
    and their receivers waited out their timeout)."""
    count = 300

    def rank(g: rd.Group):
        if g.rank() == 0:
            errors: list[BaseException] = []

            def sender(p: int) -> None:
                try:
                    for i in range(count):
                        rd.send(np.full(1, i), p, group=g, timeout=30)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=sender, args=(p,)) for p in range(1, 5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            return [f"{type(e).__name__}: {e}" for e in errors]
        return [int(rd.recv(1, np.int64, 0, group=g, timeout=30)[0]) for _ in range(count)] == list(range(count))

    results = run_ranks(5, rank, shm=False, timeout=120)
    assert results[0] == [] and results[1:] == [True] * 4, results
