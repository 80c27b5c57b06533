"""Receives from any rank (recv_any, recv_object_any): which message each takes, in what order,
beside receives from one rank, and how they fail. Ranks as threads over real connections; the
ranks that leave the job are real processes under the launcher."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import GroupBrokenError, MismatchError, PeerLostError, RingError, RingTimeoutError

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, count_bytecodes, run_launcher


def test_recv_any_takes_every_message_with_its_sender_and_each_sender_s_in_order():
    n, each = 5, 3

    def rank(g):
        r = g.rank()
        if r != 0:
            for k in range(each):
                rd.send(np.array([r, k, r * k], dtype=np.int32), 0, group=g)
            return None
        got = []
        for _ in range((n - 1) * each):
            src, x = rd.recv_any(3, np.int32, group=g)
            assert x.dtype == np.int32 and x.shape == (3,)
            got.append((src, x.tolist()))
        return got

    got = run_ranks(n, rank)[0]
    for s in range(1, n):
        assert [x for src, x in got if src == s] == [[s, k, s * k] for k in range(each)], got


def test_recv_object_any_returns_each_sender_s_object_with_its_rank():
    def rank(g):
        r = g.rank()
        if r != 0:
            rd.send_object({"rank": r, "text": "x" * r}, 0, group=g)
            return None
        return sorted(rd.recv_object_any(group=g) for _ in range(g.size() - 1))

    assert run_ranks(4, rank)[0] == [(s, {"rank": s, "text": "x" * s}) for s in (1, 2, 3)]


def test_senders_whose_messages_all_wait_take_turns():
    # Ranks 1 and 2 have four messages each waiting before rank 0 starts: it takes them in
    # turn, not all of rank 1's first (a sender sending without pause would starve the other).
    def rank(g):
        r = g.rank()
        if r != 0:
            for k in range(4):
                rd.send(np.full(2, k), 0, group=g)
        rd.barrier(group=g)
        if r == 0:
            # A sender's dial ends at the acceptor's WELCOME, which files the connection just after:
            # under load rank 2's came in after rank 1's four messages were taken (2 in 30 runs).
            deadline = time.monotonic() + 10
            while len({k.peer for k in g._endpoint._inbox if k.kind == "p2p"}) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            return [rd.recv_any(2, np.int64, group=g)[0] for _ in range(8)]
        return None

    assert run_ranks(3, rank)[0] == [1, 2, 1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("first", ["recv", "recv_any"])
def test_receives_match_messages_in_the_order_this_rank_posted_them(first):
    # Posted first, a recv from rank 1 gets rank 1's first message and recv_any the next; posted
    # first, recv_any gets rank 1's first message, and the recv from 1 waits for the second.
    def rank(g):
        r = g.rank()
        if r == 1:
            time.sleep(0.2)  # both receives are posted before anything arrives
            rd.send(np.array([10]), 0, group=g)
            rd.send(np.array([20]), 0, group=g)
        if r != 0:
            return None
        if first == "recv":
            one = rd.recv(1, np.int64, 1, group=g, async_op=True)
            anyone = rd.recv_any(1, np.int64, group=g, async_op=True)
        else:
            anyone = rd.recv_any(1, np.int64, group=g, async_op=True)
            one = rd.recv(1, np.int64, 1, group=g, async_op=True)
        src, x = anyone.wait()
        return src, int(x[0]), int(one.wait()[0])

    assert run_ranks(3, rank)[0] == ((1, 20, 10) if first == "recv" else (1, 10, 20))


def test_a_recv_from_one_rank_posted_after_recv_any_waits_for_it_even_when_its_rank_sent_first():
    # Rank 2's message arrives while recv_any is still waiting: recv_any takes it (it was
    # posted first), and the recv from 2 gets rank 2's second message.
    def rank(g):
        r = g.rank()
        if r == 2:
            rd.send(np.array([1]), 0, group=g)
            rd.send(np.array([2]), 0, group=g)
        if r == 1:
            time.sleep(0.3)
            rd.send(np.array([3]), 0, group=g)
        if r != 0:
            return None
        anyone = rd.recv_any(1, np.int64, group=g, async_op=True)
        two = rd.recv(1, np.int64, 2, group=g, async_op=True)
        last = rd.recv_any(1, np.int64, group=g, async_op=True)
        return [(s, int(x[0])) for s, x in (anyone.wait(), last.wait())], int(two.wait()[0])

    assert run_ranks(3, rank)[0] == ([(2, 1), (1, 3)], 2)


@pytest.mark.parametrize("async_op", [False, True])
def test_a_message_of_another_shape_breaks_the_group_on_both_ranks(async_op):
    def rank(g):
        r = g.rank()
        try:
            if r == 2:
                rd.send(np.zeros(4, np.float32), 0, group=g)
            elif r == 0:
                got = rd.recv_any(3, np.int64, group=g, async_op=async_op)
                if async_op:
                    got.wait()
            rd.barrier(group=g)
        except RingError as exc:
            return type(exc), str(exc)
        return None

    outcomes = run_ranks(3, rank)
    detail = ("rank 0 expected recv_any(shape=(3,), dtype=int64) from rank 2 but rank 2 sent "
              "send(shape=(4,), dtype=float32) [call #0] (group 'world')")
    assert outcomes[0] == (MismatchError, detail), outcomes
    assert outcomes[2] == (MismatchError, f"rank 2: barrier aborted by rank 0: {detail}"), outcomes
    assert outcomes[1][0] in (MismatchError, GroupBrokenError), outcomes


@pytest.mark.parametrize("async_op", [False, True])
def test_recv_any_with_no_sender_times_out_saying_so(async_op):
    def rank(g):
        if g.rank() != 0:
            return None
        began = time.monotonic()
        try:
            got = rd.recv_any(1, np.int8, group=g, timeout=0.4, async_op=async_op)
            if async_op:
                got.wait()
        except RingTimeoutError as exc:
            return str(exc), time.monotonic() - began
        return "returned", 0.0

    message, took = run_ranks(3, rank)[0]
    assert message == "rank 0: recv_any in group 'world': no rank sent a message it takes within 0.4 s"
    assert 0.3 < took < 5, took


def test_recv_any_refuses_a_group_of_one_and_bad_arguments_before_taking_a_message():
    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send(np.arange(3), 0, group=g)
            return None
        errors = []
        for call in (lambda: rd.recv_any((3, -1), np.int64, group=g),
                     lambda: rd.recv_any(3, object, group=g),
                     lambda: rd.recv_any(3, np.int64, group=g, timeout=-1)):
            with pytest.raises((TypeError, ValueError)) as info:
                call()
            errors.append(str(info.value))
        src, x = rd.recv_any(3, np.int64, group=g)  # the message is still there, for a good call
        return errors, src, x.tolist()

    errors, src, x = run_ranks(2, rank)[0]
    assert "dimensions cannot be negative" in errors[0] and "object dtypes are not supported" in errors[1], errors
    assert "timeout" in errors[2], errors
    assert (src, x) == (1, [0, 1, 2])

    def alone(g):
        with pytest.raises(ValueError, match="rank 0: recv_any: a group of size 1 has no other rank to receive from"):
            rd.recv_any(1, np.int8, group=g)
        with pytest.raises(ValueError, match="rank 0: recv_object_any: a group of size 1"):
            rd.recv_object_any(group=g)
        return True

    assert run_ranks(1, alone) == [True]


def test_closing_a_group_ends_an_outstanding_recv_any():
    # An async recv_any waits in every sender's lane: closing its group ends it once, with the
    # closing error, as it does a send outstanding beside it, and the progress thread goes on
    # serving other groups.
    def rank(g):
        sub = g.split(0)
        if g.rank() != 0:
            rd.barrier(group=g)
            rd.send(np.array([7]), 0, group=g)
            return None
        pending = rd.recv_any(1, np.int64, group=sub, async_op=True)
        unread = rd.send(np.zeros(1 << 22), 1, group=sub, async_op=True)  # 32 MB that rank 1 never takes
        time.sleep(0.1)
        sub.close()
        for work in (pending, unread):
            with pytest.raises(RingError, match="closed"):
                work.wait(timeout=10)
        rd.barrier(group=g)
        return rd.recv_any(1, np.int64, group=g, async_op=True).wait(timeout=10)[0]

    assert run_ranks(3, rank)[0] in (1, 2)


def test_ranks_that_leave_drop_out_and_recv_any_says_when_none_is_left():
    # Under the launcher: rank 1 sends and exits at once; rank 2 sends a second later. Rank 0
    # gets both, then learns at once that nobody is left to send (not after its timeout).
    res = run_launcher(["-n", "3", str(SCRIPTS / "any_source_leavers.py")], timeout=60,
                       env={"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "10"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] got [(1, 1), (2, 2)]" in res.stdout, res.stdout + res.stderr
    m = re.search(r"^\[0\] raised PeerLostError after ([\d.]+) s: rank 0: recv_any in group 'world': no rank is "
                  r"left to send \(rank 1: .*; rank 2: .*\)$", res.stdout, re.M)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) < 10, m.group(0)


def test_a_blocking_recv_any_keeps_its_place_against_a_recv_another_thread_posts_later():
    # Thread A's recv_any is waiting when thread B posts a recv from rank 1: rank 1's first
    # message is A's. (A gave its turns back between looks, and B took rank 1's message.)
    def rank(g):
        if g.rank() == 1:
            time.sleep(0.6)
            rd.send(np.array([10]), 0, group=g)
            rd.send(np.array([20]), 0, group=g)
        if g.rank() != 0:
            return None
        out = {}
        a = threading.Thread(target=lambda: out.setdefault("any", rd.recv_any(1, np.int64, group=g, timeout=10)))
        b = threading.Thread(target=lambda: out.setdefault("one", rd.recv(1, np.int64, 1, group=g, timeout=10)))
        a.start()
        time.sleep(0.3)
        b.start()
        a.join()
        b.join()
        return out["any"][0], int(out["any"][1][0]), int(out["one"][0])

    assert run_ranks(3, rank)[0] == (1, 10, 20)


def test_a_recv_any_that_failed_from_one_lane_is_not_opened_again_from_another():
    # Rank 0's async recv from rank 1 (which never sends) and recv_any behind it, beside a send
    # nobody reads; then a collective breaks the group. Ending the recv opened recv_any, which
    # failed there; the progress thread then opened it again from its other lane and failed
    # itself (KeyError, or "x not in list"), failing every group's messages.
    def rank(g):
        if g.rank() != 0:
            time.sleep(0.3)
            with pytest.raises(RingError):
                rd.all_sum(np.ones(4), group=g, timeout=5)
            time.sleep(1)
            return None
        works = [rd.send(np.zeros(1 << 22), 2, group=g, async_op=True, timeout=30),
                 rd.recv(1, np.int64, 1, group=g, async_op=True, timeout=30),
                 rd.recv_any(1, np.int64, group=g, async_op=True, timeout=30)]
        time.sleep(0.2)
        with pytest.raises(MismatchError):
            rd.all_sum(np.ones(3), group=g, timeout=5)
        errors = []
        for w in works:
            with pytest.raises(RingError) as info:
                w.wait(timeout=10)
            errors.append(str(info.value))
        return errors

    errors = run_ranks(3, rank)[0]
    assert not any("progress thread failed" in e for e in errors), errors


@pytest.mark.parametrize("async_op", [True, False])
def test_a_recv_any_queued_behind_a_recv_times_out_on_time(async_op):
    # recv_any waits first in rank 2's lane from the start: its timeout counts from then, not
    # again from when the recv from rank 1 ahead of it ends.
    def rank(g):
        r = g.rank()
        if r == 1:
            time.sleep(0.9)
            rd.send(np.array([1]), 0, group=g)
        if r == 2:
            rd.send(np.array([2]), 0, group=g)  # its connection, for rank 2's lane
        if r != 0:
            time.sleep(3)
            return None
        rd.recv(1, np.int64, 2, group=g)
        began = time.monotonic()
        one = rd.recv(1, np.int64, 1, group=g, async_op=True, timeout=5)
        with pytest.raises(RingTimeoutError, match="recv_any in group 'world': no rank sent a message it takes within 1 s"):
            got = rd.recv_any(1, np.int64, group=g, async_op=async_op, timeout=1)
            if async_op:
                got.wait()
        took = time.monotonic() - began
        assert int(one.wait()[0]) == 1
        return took

    assert run_ranks(3, rank)[0] < 1.6


def test_an_async_recv_any_does_not_spin_while_another_thread_receives_from_a_rank_it_watches(monkeypatch):
    # Thread A takes a 128 MB message from rank 1 while an async recv_any waits: rank 1's socket
    # stays readable, but its turn is A's, so the progress thread does not poll it (it looked
    # tens of thousands of times a second, each look finding the turn taken).
    from ringdist import any_source

    looks = [0]
    real = any_source.FromAny._look

    def counted(self, *args):
        looks[0] += 1
        return real(self, *args)

    monkeypatch.setattr(any_source.FromAny, "_look", counted)

    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send(np.zeros(1), 0, group=g)
            rd.send(np.ones(1 << 24), 0, group=g)
        if r != 0:
            rd.barrier(group=g)
            if r == 2:
                rd.send(np.array([5.0]), 0, group=g)
            return None
        rd.recv(1, np.float64, 1, group=g)
        took = []
        a = threading.Thread(target=lambda: took.append(rd.recv(1 << 24, np.float64, 1, group=g).size))
        a.start()
        time.sleep(0.05)
        began = time.monotonic()
        pending = rd.recv_any(1, np.float64, group=g, async_op=True)
        a.join()
        seconds, counted_looks = time.monotonic() - began, looks[0]
        rd.barrier(group=g)
        pending.wait(timeout=10)
        return took, seconds, counted_looks

    took, seconds, counted_looks = run_ranks(3, rank)[0]
    assert took == [1 << 24]
    assert counted_looks <= 20 + 2 * seconds / any_source.CONNECT_RETRY, (counted_looks, seconds)


def test_a_recv_any_whose_message_has_come_costs_little_more_per_sender_than_a_recv():
    # 16 senders' messages wait: recv_any finds one with one poll of every connection, not a
    # look at each sender in turn (150 bytecodes apiece; a recv of the same message costs ~1,600).
    def rank(g):
        n = g.size()
        if g.rank() != 0:
            for k in range(3):
                rd.send(np.array([k]), 0, group=g)
            rd.barrier(group=g)
            return None
        rd.barrier(group=g)
        taken = [rd.recv_any(1, np.int64, group=g)[0] for _ in range(n - 1)]
        counts = [count_bytecodes(lambda: taken.append(rd.recv_any(1, np.int64, group=g)[0])) for _ in range(n - 1)]
        # A sender with a message left (one whose connection was filed late is passed over meanwhile).
        src = next(s for s in range(1, n) if taken.count(s) < 3)
        one = count_bytecodes(lambda: rd.recv(1, np.int64, src, group=g))
        return min(counts), one, n - 1

    anyone, one, senders = run_ranks(17, rank)[0]
    assert anyone <= one + 60 * senders, (anyone, one, senders)


def test_a_sender_whose_connection_arrives_late_is_not_starved_by_one_already_sending():
    # Rank 1's connection is taken and 40 of its messages wait when rank 2's first arrives:
    # rank 2's comes next in turn (a first look that polled only the connections taken
    # found rank 1's every time, and rank 2's came last).
    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send(np.zeros(1), 0, group=g)
        if r == 0:
            assert rd.recv_any(None, None, group=g)[0] == 1
        rd.barrier(group=g)
        if r == 1:
            for k in range(40):
                rd.send(np.full(1, k), 0, group=g)
        if r == 2:
            rd.send(np.ones(1), 0, group=g)
        rd.barrier(group=g)
        if r != 0:
            return None
        time.sleep(0.2)
        return [rd.recv_any(None, None, group=g)[0] for _ in range(41)].index(2)

    assert run_ranks(3, rank)[0] <= 1


def test_threads_in_blocking_recv_any_at_once_each_get_whole_messages():
    # Two threads of rank 0 loop in recv_any while three ranks send 300 messages each: every
    # message arrives once, each sender's in order within each thread (one poll object shared
    # by the threads raised "concurrent poll() invocation").
    def rank(g):
        r = g.rank()
        if r != 0:
            for k in range(300):
                rd.send(np.array([r, k]), 0, group=g)
            return None
        got = {0: [], 1: []}
        errors = []

        def take(t):
            try:
                for _ in range(450):
                    got[t].append(tuple(rd.recv_any(2, np.int64, group=g, timeout=20)[1].tolist()))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=take, args=(t,)) for t in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors, got

    errors, got = run_ranks(4, rank, timeout=120)[0]
    assert errors == []
    assert sorted(got[0] + got[1]) == sorted((s, k) for s in (1, 2, 3) for k in range(300))
    for t in (0, 1):
        for s in (1, 2, 3):
            ks = [k for src, k in got[t] if src == s]
            assert ks == sorted(ks), (t, s)


def test_an_object_any_source_receive_names_itself_in_its_errors():
    # Its errors named recv_object (the receive it wraps).
    def rank(g):
        if g.rank() == 0:
            with pytest.raises(ValueError):
                rd.send_object(lambda: 1, 1, group=g)  # (a lambda cannot be pickled: its header says so)
            return None
        with pytest.raises(ValueError) as info:
            rd.recv_object_any(group=g, timeout=20)
        return str(info.value)

    got = run_ranks(2, rank)[1]
    assert got.startswith("rank 1: recv_object_any: rank 0 could not send its object: rank 0: send_object: "), got


@pytest.mark.parametrize("async_op", [False, True], ids=["blocking", "async"])
def test_a_sender_that_closed_the_group_is_one_fewer_to_wait_for(async_op):
    """A worker done with its part closes the group: an any-source receive asking it hears so,
    and waits for the others (it failed, breaking the group, and the message another rank sent
    later was lost); once every sender has closed, it raises PeerLostError."""
    def rank(g: rd.Group):
        found = []
        for closing in ((2,), (1, 2)):
            sub = g.split(0)
            if g.rank() in closing:
                sub.close()
            elif g.rank() == 1:
                time.sleep(3.0)  # (past the receive's first asks)
                rd.send(np.ones(2), 0, group=sub)
            else:
                try:
                    got = rd.recv_any((2,), np.float64, group=sub, timeout=30, async_op=async_op)
                    src, x = got.wait() if async_op else got
                    found.append((src, x.tolist()))
                except rd.RingError as exc:
                    found.append(f"{type(exc).__name__}: {exc}")
            rd.barrier(group=g)
            if g.rank() not in closing:
                sub.close()
        return found

    first, then = run_ranks(3, rank, shm=False)[0]
    assert first == (1, [1.0, 1.0]), first
    assert then.startswith("PeerLostError: rank 0: recv_any in group ") and "no rank is left to send" in then, then
    assert "rank 1 closed group" in then and "rank 2 closed group" in then, then
