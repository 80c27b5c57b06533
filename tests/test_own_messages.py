"""Messages a rank sends itself (MPI allows them: a periodic dimension of size 1 shifts to the
rank itself): matched as another rank's are, on ranks as threads over real connections."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import GroupBrokenError, MismatchError, RingError, RingTimeoutError

from harness import run_ranks


def test_a_receive_takes_the_first_message_of_its_tag_and_a_message_the_first_receive_posted():
    def rank(g):
        me = g.rank()
        rd.send(np.array([1]), me, tag=1, group=g)
        rd.send(np.array([2]), me, tag=2, group=g)
        rd.send(np.array([3]), me, tag=1, group=g)
        st = rd.Status()
        taken = [rd.recv((1,), np.int64, me, tag=2, status=st, group=g)[0], (st.source, st.tag),
                 rd.recv(None, None, me, group=g)[0], rd.recv_like(np.zeros(1, np.int64), me, tag=1, group=g)[0]]
        # Receives posted first: each message goes to the first that takes its tag.
        any_tag = rd.recv((1,), np.int64, me, group=g, async_op=True)
        seven = rd.recv((1,), np.int64, me, tag=7, group=g, async_op=True)
        also_any = rd.recv((1,), np.int64, me, group=g, async_op=True)
        rd.send(np.array([70]), me, tag=7, group=g)
        rd.send(np.array([71]), me, tag=7, group=g)
        rd.send(np.array([5]), me, tag=5, group=g)
        posted = [w.wait()[0] for w in (any_tag, seven, also_any)]
        return taken, posted

    for me, (taken, posted) in enumerate(run_ranks(2, rank)):
        assert taken == [2, (me, 2), 1, 3] and posted == [70, 71, 5], (taken, posted)


def test_a_halo_exchange_on_a_grid_with_a_dimension_of_one_posts_messages_to_itself():
    # dims_create(2, 2) is (2, 1): along the second dimension each rank's neighbours are itself.
    def rank(g):
        grid = rd.Grid(rd.dims_create(g.size(), 2), periodic=True, group=g)
        got = []
        for dim in (0, 1):
            src, dst = grid.shift(dim)
            field = np.full((4, 4), 10 * g.rank() + dim, dtype=np.float64)
            works = [rd.recv((4,), np.float64, src, tag=dim, group=g, async_op=True),
                     rd.send(field[:, -1], dst, tag=dim, group=g, async_op=True)]  # a column: a view
            got.append(rd.wait_all(works)[0].tolist())
        return got

    assert run_ranks(2, rank) == [[[10.0] * 4, [1.0] * 4], [[0.0] * 4, [11.0] * 4]]


def test_objects_to_itself_and_what_does_not_fit():
    def rank(g):
        me = g.rank()
        obj = {"rank": me, "data": np.arange(3)}
        rd.send_object(obj, me, tag=3, group=g)
        obj["rank"] = -1  # the message is the object as it was at the send
        got = rd.recv_object(me, tag=3, group=g)
        w = rd.recv_object(me, group=g, async_op=True)
        rd.send_object([1, 2], me, group=g, async_op=True).wait()
        with pytest.raises(ValueError, match=r"send_object: the object cannot be pickled"):
            rd.send_object(threading.Lock(), me, group=g)
        with pytest.raises(ValueError, match=rf"rank {me}: recv_object: rank {me} could not send its object"):
            rd.recv_object(me, group=g)
        rd.send(np.zeros(2), me, group=g)
        with pytest.raises(MismatchError, match=rf"rank {me} expected send_object from itself but it sent "
                                                r"send\(shape=\(2,\), dtype=float64\)"):
            rd.recv_object(me, group=g)
        rd.send_object("text", me, tag=9, group=g)
        with pytest.raises(MismatchError, match=rf"rank {me} expected recv\(shape=\(2,\), dtype=int32, tag=9\) "
                                                r"from itself but it sent send_object\(tag=9\)"):
            rd.recv((2,), np.int32, me, tag=9, group=g)
        rd.send(np.ones(3), me, group=g)
        with pytest.raises(MismatchError, match=r"expected recv\(shape=\(2,\), dtype=float64\) from itself"):
            rd.recv((2,), np.float64, me, group=g)
        total = rd.all_sum(np.ones(2), group=g)  # a mismatch with itself leaves the group usable
        return got["rank"], got["data"].tolist(), w.wait(), total.tolist()

    assert run_ranks(2, rank) == [(0, [0, 1, 2], [1, 2], [2.0, 2.0]), (1, [0, 1, 2], [1, 2], [2.0, 2.0])]


def test_a_receive_from_itself_that_times_out_takes_nothing():
    def rank(g):
        me = g.rank()
        started = time.monotonic()
        with pytest.raises(RingTimeoutError, match=rf"rank {me}: recv from itself \(group 'world'\): no message "
                                                   r"with tag 4 within 0.3 s"):
            rd.recv((1,), np.int64, me, tag=4, group=g, timeout=0.3)
        waited = time.monotonic() - started
        late = rd.recv((1,), np.int64, me, tag=4, group=g, timeout=0.3, async_op=True)
        with pytest.raises(RingTimeoutError, match="no message with tag 4 within 0.3 s"):
            late.wait()
        rd.send(np.array([4]), me, tag=4, group=g)  # the next receive's: the two above took nothing
        return waited, rd.recv((1,), np.int64, me, tag=4, group=g, timeout=0.3)[0], rd.all_sum(np.ones(1), group=g)[0]

    for waited, got, total in run_ranks(2, rank):
        assert 0.3 <= waited < 5 and got == 4 and total == 2


def test_receives_from_itself_that_wait_end_when_the_group_breaks_or_closes():
    def rank(g):
        me = g.rank()
        sub = g.split(0)
        waiting = rd.recv((1,), np.int64, me, group=g, async_op=True)
        on_sub = rd.recv_object(me, group=sub, async_op=True)
        with pytest.raises(MismatchError):
            rd.all_gather(np.zeros(1 + me), group=g)  # the ranks disagree: the world is broken
        with pytest.raises(GroupBrokenError, match="a receive from itself"):
            waiting.wait(timeout=10)
        with pytest.raises(GroupBrokenError):
            rd.send(np.zeros(1), me, group=g)
        sub.close()
        with pytest.raises(RingError, match=r"group 'world/0:0' is closed"):
            on_sub.wait(timeout=10)
        return True

    assert run_ranks(2, rank) == [True, True]


def test_another_thread_sends_to_a_rank_waiting_for_itself_and_an_any_source_receive_is_not_one():
    def rank(g):
        me = g.rank()
        if me == 0:
            rd.send(np.array([100]), 0, group=g)  # to itself: not what an any-source receive takes
            src, first = rd.recv_any((1,), np.int64, group=g)
            sender = threading.Timer(0.2, lambda: rd.send(np.array([200]), 0, tag=2, group=g))
            sender.start()
            later = rd.recv((1,), np.int64, 0, tag=2, group=g)
            sender.join()
            return src, first[0], rd.recv((1,), np.int64, 0, group=g)[0], later[0]
        rd.send(np.array([1]), 0, group=g)
        return None

    assert run_ranks(2, rank)[0] == (1, 1, 100, 200)


def test_a_group_of_one_sends_to_itself():
    def rank(g):
        rd.send(np.arange(2), 0, group=g)
        w = rd.send_object("x", 0, group=g, async_op=True)
        return rd.recv(None, None, 0, group=g).tolist(), rd.recv_object(0, group=g), w.wait()

    assert run_ranks(1, rank) == [([0, 1], "x", None)]


def test_sends_to_itself_interrupted_at_random_moments_leave_no_receive_hanging():
    # Matching ran on the sending thread: a signal handler raising inside it left the receive
    # waiting forever (14 of 200), or failing with the sender's interruption (6 of 200).
    import subprocess
    import sys

    from helpers import SCRIPTS
    res = subprocess.run([sys.executable, str(SCRIPTS / "own_interrupted.py"), "200"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "counts: " in res.stdout and "interrupted" in res.stdout, res.stdout


def test_a_receive_from_itself_keeps_its_group_until_it_ends():
    # Dropped with the receive waiting: the group, its mailbox and the receive were collected
    # together, and the receive's handle never ended (its timeout neither).
    import gc

    def rank(g):
        def post():
            sub = g.split(0)
            return rd.recv((1,), np.int64, sub.rank(), group=sub, timeout=0.3, async_op=True)

        w = post()
        gc.collect()
        with pytest.raises(RingTimeoutError, match=r"no message within 0.3 s"):
            w.wait(timeout=10)
        return True

    assert run_ranks(2, rank) == [True, True]
