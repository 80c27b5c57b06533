"""Tags on messages: which message a receive with a tag takes, what happens to the messages it
reads on the way (kept whole for later receives, in order), with blocking and async receives,
threads, objects, any-source receives and sendrecv; and how bad tags and misfits fail. Ranks
as threads over real connections."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import GroupBrokenError, MismatchError, RingError
from ringdist.settings import Settings
from ringdist.p2p import _message_header
from ringdist.object_messages import _message_header as _object_header

from harness import RankFailed, run_ranks


def test_a_receive_takes_the_next_message_with_its_tag_and_the_rest_wait_in_order():
    sent = [(1, "a"), (2, "b"), (1, "c"), (3, "d"), (2, "e")]

    def rank(g):
        if g.rank() == 0:
            for tag, text in sent:
                rd.send(np.frombuffer(text.encode(), np.uint8), 1, tag=tag, group=g)
            return None
        got = []
        for tag in (2, 2, 1, rd.ANY_TAG, 3):
            st = rd.Status()
            x = rd.recv(None, np.uint8, 0, tag=tag, status=st, group=g)
            got.append((st.source, st.tag, x.tobytes().decode()))
        return got

    assert run_ranks(2, rank)[1] == [(0, 2, "b"), (0, 2, "e"), (0, 1, "a"), (0, 1, "c"), (0, 3, "d")]


def test_an_untagged_receive_takes_messages_in_the_order_sent_whatever_their_tags():
    def rank(g):
        if g.rank() == 0:
            for k in range(6):
                rd.send(np.array([k]), 1, tag=k % 3, group=g)
            return None
        got = []
        for _ in range(6):
            st = rd.Status()
            got.append((int(rd.recv(1, np.int64, 0, status=st, group=g)[0]), st.tag))
        return got

    assert run_ranks(2, rank)[1] == [(k, k % 3) for k in range(6)]


def test_a_large_message_of_another_tag_is_read_whole_so_its_blocking_send_returns():
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: far past the kernel's buffers

    def rank(g):
        if g.rank() == 0:
            rd.send(big, 1, tag=9, group=g)  # returns only once rank 1 has read it all
            rd.send(np.ones(3), 1, tag=10, group=g)
            return None
        small = rd.recv(3, np.float64, 0, tag=10, group=g)
        large = rd.recv(big.shape, big.dtype, 0, tag=9, group=g)
        return small, large

    small, large = run_ranks(2, rank)[1]
    assert small.tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(large, big)


def _two_then_one(g):
    """Rank 0's part: [2, 2, 2] with tag 2; then, once rank 1 says it has it, [1, 1, 1] with tag 1."""
    rd.send(np.full(3, 2), 1, tag=2, group=g)
    rd.recv(1, np.int64, 1, group=g)
    rd.send(np.full(3, 1), 1, tag=1, group=g)


def test_an_async_receive_posted_later_completes_while_an_earlier_one_waits():
    # Legal in MPI: rank 0 sends tag 1 only after rank 1's receive for tag 2 has completed.
    def rank(g):
        if g.rank() == 0:
            return _two_then_one(g)
        first = rd.recv(3, np.int64, 0, tag=1, group=g, async_op=True)
        second = rd.recv(3, np.int64, 0, tag=2, group=g, async_op=True)
        b = second.wait(timeout=10)
        rd.send(np.zeros(1, np.int64), 0, group=g)
        return first.wait(timeout=10).tolist(), b.tolist()

    assert run_ranks(2, rank)[1] == ([1, 1, 1], [2, 2, 2])


def test_an_async_receive_posted_after_its_message_was_read_ahead_takes_it():
    def rank(g):
        if g.rank() == 0:
            return _two_then_one(g)
        first = rd.recv(3, np.int64, 0, tag=1, group=g, async_op=True)
        deadline = time.monotonic() + 10
        while not g.held and time.monotonic() < deadline:  # the tag-2 message read past, kept
            time.sleep(0.005)
        second = rd.recv(3, np.int64, 0, group=g, async_op=True)  # any tag: the kept one
        b = second.wait(timeout=10)
        rd.send(np.zeros(1, np.int64), 0, group=g)
        return first.wait(timeout=10).tolist(), b.tolist()

    assert run_ranks(2, rank)[1] == ([1, 1, 1], [2, 2, 2])


def test_a_thread_waiting_for_the_pair_s_turn_takes_what_the_turn_s_holder_read_for_it():
    # Thread a holds the turn at rank 0's messages, waiting for tag 1; thread b waits for the
    # turn, for tag 2. Only then does tag 2 come: a reads it, and b must take it from there
    # (rank 0 sends tag 1 only once b has).
    def rank(g):
        if g.rank() == 0:
            rd.recv(1, np.int64, 1, group=g)  # both threads wait
            return _two_then_one(g)
        out: dict[str, object] = {}

        def receive(name: str, tag: int) -> None:
            out[name] = rd.recv(3, np.int64, 0, tag=tag, group=g).tolist()
            if name == "b":
                rd.send(np.zeros(1, np.int64), 0, group=g)

        a = threading.Thread(target=receive, args=("a", 1))
        a.start()
        deadline = time.monotonic() + 10
        while not g.p2p_busy(0, False) and time.monotonic() < deadline:
            time.sleep(0.005)
        b = threading.Thread(target=receive, args=("b", 2))
        b.start()
        time.sleep(0.2)  # b waits for the turn
        rd.send(np.zeros(1, np.int64), 0, group=g)
        a.join(10)
        b.join(10)
        return out

    assert run_ranks(2, rank)[1] == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_objects_and_arrays_share_a_pair_s_tags():
    def rank(g):
        if g.rank() == 0:
            for t in range(4):
                rd.send_object({"t": t}, 1, tag=t, group=g, async_op=True)
            rd.send(np.arange(3), 1, tag=9, group=g)
            rd.send_object("last", 1, tag=4, group=g)
            return None
        works = [rd.recv_object(0, tag=t, group=g, async_op=True) for t in (3, 2, 1, 0)]
        x = rd.recv(3, np.int64, 0, tag=9, group=g)  # queued behind the async ones
        st = rd.Status()
        last = rd.recv_object(0, tag=4, status=st, group=g)
        return rd.wait_all(works), x.tolist(), last, (st.source, st.tag)

    assert run_ranks(2, rank)[1] == ([{"t": 3}, {"t": 2}, {"t": 1}, {"t": 0}], [0, 1, 2], "last", (0, 4))


def test_recv_any_takes_a_message_read_ahead_before_later_ones():
    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send(np.array([5]), 0, tag=5, group=g)
            rd.send(np.array([6]), 0, tag=6, group=g)
            rd.send(np.array([7]), 0, tag=7, group=g)
            return None
        if r == 2:
            return None
        six = rd.recv(1, np.int64, 1, tag=6, group=g)  # reads tag 5 on the way
        got = []
        for _ in range(2):
            st = rd.Status()
            src, x = rd.recv_any(1, np.int64, status=st, group=g)
            got.append((src, int(x[0]), st.tag))
        return int(six[0]), got

    assert run_ranks(3, rank)[0] == (6, [(1, 5, 5), (1, 7, 7)])


def test_async_recv_any_waiting_behind_a_receive_takes_the_message_it_reads_ahead():
    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send_object("for anyone", 0, tag=3, group=g)
            rd.recv(1, np.int64, 0, group=g)
            rd.send_object("for tag 1", 0, tag=1, group=g)
            return None
        first = rd.recv_object(1, tag=1, group=g, async_op=True)
        anyone = rd.recv_object_any(group=g, async_op=True)
        src, obj = anyone.wait(timeout=10)
        rd.send(np.zeros(1, np.int64), 1, group=g)
        return src, obj, first.wait(timeout=10)

    assert run_ranks(2, rank)[0] == (1, "for anyone", "for tag 1")


@pytest.mark.parametrize("async_op", [False, True])
def test_recv_any_for_one_tag_gives_back_a_sender_whose_message_is_another_tag(async_op):
    # Rank 1's tag-1 message comes first; its tag 2 only once rank 0 has had rank 2's: a
    # receive for tag 2 that stayed with rank 1 would wait forever.
    def rank(g):
        r = g.rank()
        if r == 1:
            rd.send(np.array([11]), 0, tag=1, group=g)
            rd.recv(1, np.int64, 0, group=g)
            rd.send(np.array([12]), 0, tag=2, group=g)
            return None
        if r == 2:
            time.sleep(0.3)  # after rank 1's first message
            rd.send(np.array([22]), 0, tag=2, group=g)
            return None
        got = []
        for tag in (2, 2, 1):
            st = rd.Status()
            if async_op:
                src, x = rd.recv_any(1, np.int64, tag=tag, status=st, group=g, async_op=True).wait(timeout=10)
            else:
                src, x = rd.recv_any(1, np.int64, tag=tag, status=st, group=g)
            got.append((src, int(x[0]), st.tag))
            if src == 2:
                rd.send(np.zeros(1, np.int64), 1, group=g)
        return got

    assert run_ranks(3, rank)[0] == [(2, 22, 2), (1, 12, 2), (1, 11, 1)]


def test_async_recv_any_for_one_tag_reads_past_other_tags_and_keeps_its_place():
    # Ranks 1 and 2 send tag 1, and tag 2 only once rank 0's receives for tag 1 (posted after
    # those for tag 2) are done: the tag-2 receives read the tag-1 messages, keep them for the
    # receives behind them, and look again.
    def rank(g):
        r = g.rank()
        if r != 0:
            rd.send_object(("one", r), 0, tag=1, group=g)
            rd.recv(1, np.int64, 0, group=g)
            rd.send_object(("two", r), 0, tag=2, group=g)
            return None
        twos = [rd.recv_object_any(tag=2, group=g, async_op=True) for _ in range(2)]
        ones = [rd.recv_object_any(tag=1, group=g, async_op=True) for _ in range(2)]
        got_ones = sorted(rd.wait_all(ones, timeout=10))
        for p in (1, 2):
            rd.send(np.zeros(1, np.int64), p, group=g)
        return got_ones, sorted(rd.wait_all(twos, timeout=10))

    assert run_ranks(3, rank)[0] == ([(1, ("one", 1)), (2, ("one", 2))], [(1, ("two", 1)), (2, ("two", 2))])


def test_sendrecv_with_tags_around_a_ring():
    def rank(g):
        r, n = g.rank(), g.size()
        st = rd.Status()
        got = rd.sendrecv(np.array([r]), (r + 1) % n, (r - 1) % n, sendtag=100 + r, recvtag=100 + (r - 1) % n,
                          status=st, group=g)
        return int(got[0]), st.source, st.tag

    assert run_ranks(3, rank) == [(2, 2, 102), (0, 0, 100), (1, 1, 101)]


def test_sendrecv_to_itself_checks_the_tag():
    def rank(g):
        st = rd.Status()
        same = rd.sendrecv(np.arange(2), 0, 0, sendtag=4, recvtag=4, status=st, group=g)
        with pytest.raises(MismatchError, match=r"rank 0 expected sendrecv\(recvtag=5\) from itself but sends sendtag=4"):
            rd.sendrecv(np.arange(2), 0, 0, sendtag=4, recvtag=5, group=g)
        return same.tolist(), st.source, st.tag

    g = rd.init()
    assert rank(g) == ([0, 1], 0, 4)


@pytest.mark.parametrize("call, error, text", [
    (lambda g: rd.send(np.ones(1), 1, tag=-1, group=g), ValueError,
     r"rank 0: send: tag=-1: a tag is an integer from 0 to 2147483647 \(rd.ANY_TAG, -1, is for receives"),
    (lambda g: rd.send(np.ones(1), 1, tag=rd.TAG_MAX + 1, group=g), ValueError, r"rank 0: send: tag=2147483648"),
    (lambda g: rd.send(np.ones(1), 1, tag=True, group=g), TypeError, r"rank 0: send: tag must be an integer, got bool"),
    (lambda g: rd.send_object(1, 1, tag=2.0, group=g), TypeError, r"rank 0: send_object: tag must be an integer, got float"),
    (lambda g: rd.recv(1, np.int64, 1, tag=-2, group=g), ValueError,
     r"rank 0: recv: tag=-2: a tag is an integer from 0 to 2147483647 or rd.ANY_TAG"),
    (lambda g: rd.recv_object(1, tag="7", group=g), TypeError, r"rank 0: recv_object: tag must be an integer, got str"),
    (lambda g: rd.recv(1, np.int64, 1, status={}, group=g), TypeError,
     r"rank 0: recv: status must be a ringdist Status or None, got dict"),
    (lambda g: rd.sendrecv(np.ones(1), 1, 1, recvtag=-3, group=g), ValueError, r"rank 0: sendrecv: tag=-3"),
    (lambda g: rd.send(np.ones(1), 1, tag=-1, group=g, async_op=True).wait(), ValueError, r"rank 0: send: tag=-1"),
])
def test_a_bad_tag_or_status_is_refused_before_anything_is_sent(call, error, text):
    def rank(g):
        if g.rank() == 0:
            with pytest.raises(error, match=text):
                call(g)
            rd.send(np.array([1.5]), 1, tag=3, group=g)  # the pair is in step
            return None
        return rd.recv(1, np.float64, 0, group=g).tolist()

    assert run_ranks(2, rank)[1] == [1.5]


def test_a_message_read_ahead_that_does_not_fit_its_receive_fails_the_group_on_both_ranks():
    def rank(g):
        if g.rank() == 0:
            rd.send(np.zeros(4, np.float32), 1, tag=3, group=g)
            rd.send(np.zeros(1, np.float32), 1, tag=4, group=g)
            rd.barrier(group=g)
            return None
        rd.recv(1, np.float32, 0, tag=4, group=g)  # reads tag 3 on the way
        with pytest.raises(MismatchError) as exc:
            rd.recv(5, np.float32, 0, tag=3, group=g)
        assert str(exc.value) == (
            "rank 1 expected recv(shape=(5,), dtype=float32, tag=3) from rank 0 but rank 0 sent "
            "send(shape=(4,), dtype=float32, tag=3) [call #0] (group 'world')")
        with pytest.raises(GroupBrokenError):
            rd.barrier(group=g)
        return None

    with pytest.raises(RankFailed) as failed:
        run_ranks(2, rank)
    errors = failed.value.errors
    assert [r for r, e in enumerate(errors) if e is not None] == [0]  # rank 0's barrier hears why
    assert isinstance(errors[0], MismatchError)
    assert str(errors[0]).startswith("rank 0: barrier aborted by rank 1: rank 1 expected recv(shape=(5,), "
                                     "dtype=float32, tag=3) from rank 0")


def test_a_message_of_another_kind_read_ahead_is_a_mismatch_for_its_tag():
    def rank(g):
        if g.rank() == 0:
            rd.send(np.zeros(2), 1, tag=1, group=g)
            rd.send(np.zeros(1), 1, tag=2, group=g)
            return None
        rd.recv(1, np.float64, 0, tag=2, group=g)
        with pytest.raises(MismatchError, match=r"rank 1 expected send_object tag=1 from rank 0 but rank 0 sent "
                                                r"send\(shape=\(2,\), dtype=float64, tag=1\)"):
            rd.recv_object(0, tag=1, group=g)
        return "raised"

    assert run_ranks(2, rank)[1] == "raised"


def test_an_untagged_message_s_header_carries_no_tag():
    assert "tag" not in _message_header("<f4", (3,), 0, 0).fields
    assert _message_header("<f4", (3,), 0, 7).fields["tag"] == 7
    assert "tag" not in _object_header(0, {"sizes": [1]}, 0).fields


def test_a_group_s_messages_read_ahead_are_its_own():
    # Tags are per group: a split group's messages do not meet the world's.
    def rank(g):
        sub = g.split(0)
        if g.rank() == 0:
            rd.send(np.array([1]), 1, tag=1, group=g)
            rd.send(np.array([2]), 1, tag=1, group=sub)
            return None
        a = rd.recv(1, np.int64, 0, tag=1, group=sub)
        b = rd.recv(1, np.int64, 0, tag=1, group=g)
        return int(a[0]), int(b[0])

    assert run_ranks(2, rank)[1] == (2, 1)


def test_many_tags_interleaved_with_async_sends_and_receives():
    rng = np.random.default_rng(7)
    tags = rng.integers(0, 5, size=60).tolist()

    def rank(g):
        if g.rank() == 0:
            works = [rd.send(np.array([k, t]), 1, tag=t, group=g, async_op=True) for k, t in enumerate(tags)]
            rd.wait_all(works)
            return None
        order = sorted(range(len(tags)), key=lambda k: (-tags[k], k))  # tag 4's first, each tag's in order
        works = [rd.recv(2, np.int64, 0, tag=tags[k], group=g, async_op=True) for k in order]
        return [x.tolist() for x in rd.wait_all(works)]

    got = run_ranks(2, rank)[1]
    assert got == [[k, tags[k]] for k in sorted(range(len(tags)), key=lambda k: (-tags[k], k))]


def test_a_receive_that_waits_for_a_tag_never_sent_times_out_naming_it():
    def rank(g):
        if g.rank() == 0:
            rd.send(np.array([1]), 1, tag=1, group=g)
            return None
        with pytest.raises(RingError, match=r"rank 1: recv.*(no progress|waiting).*"):
            rd.recv(1, np.int64, 0, tag=2, group=g, timeout=0.5)
        return "timed out"

    assert run_ranks(2, rank)[1] == "timed out"


@pytest.mark.parametrize("async_op", [False, True])
def test_a_receive_timed_out_names_the_messages_its_sender_sent_with_other_tags(async_op):
    # The usual mistake behind such a wait is a tag, not a sender that sent nothing: the timeout says so.
    def rank(g):
        if g.rank() == 0:
            rd.send(np.ones(3), 1, tag=5, group=g)
            rd.send_object({"a": 1}, 1, tag=7, group=g)
            return None
        with pytest.raises(rd.RingTimeoutError) as exc:
            got = rd.recv((3,), np.float64, 0, tag=6, group=g, timeout=1.0, async_op=async_op)
            if async_op:
                got.wait()
        return str(exc.value), rd.recv(None, None, 0, tag=5, group=g).tolist(), rd.recv_object(0, group=g)

    text, kept, obj = run_ranks(2, rank)[1]
    assert text.startswith("rank 1: recv made no progress for 1 s: receiving from rank 0"), text
    assert re.search(r"; rank 0 sent 2 messages this receive does not take, kept for a receive of their tag: "
                     r"tag 5: send\(shape=\(3,\), dtype=float64\); tag 7: send_object\(\d+ bytes pickled\)$", text), text
    assert kept == [1.0, 1.0, 1.0] and obj == {"a": 1}


def test_an_any_source_receive_timed_out_names_the_messages_kept_for_other_tags():
    def rank(g):
        if g.rank() != 2:
            rd.send(np.ones(2), 2, tag=5 + g.rank(), group=g)
            return None
        time.sleep(0.3)
        with pytest.raises(rd.RingTimeoutError) as exc:
            rd.recv_any((2,), np.float64, tag=3, group=g, timeout=1.0)
        return str(exc.value)

    text = run_ranks(3, rank)[2]
    assert text.startswith("rank 2: recv_any in group 'world': no rank sent a message it takes within 1 s; "), text
    assert "rank 0 sent 1 message this receive does not take, kept for a receive of its tag: tag 5: send(" in text
    assert "rank 1 sent 1 message this receive does not take, kept for a receive of its tag: tag 6: send(" in text


def test_a_send_with_any_tag_says_any_tag_is_for_receives():
    def rank(g):
        with pytest.raises(ValueError) as exc:
            rd.send(np.ones(1), 1 - g.rank(), tag=rd.ANY_TAG, group=g)
        return str(exc.value)

    assert run_ranks(2, rank)[0] == ("rank 0: send: tag=-1: a tag is an integer from 0 to 2147483647 (rd.ANY_TAG, "
                                     "-1, is for receives: it takes a message of any tag, and a message has one)")


@pytest.mark.parametrize("later", ["recv", "recv_any"])
def test_kept_messages_go_to_async_receives_in_the_order_they_were_posted(later):
    # A thread's blocking receive for tag 2 holds the pair's turn and keeps rank 0's two tag-1
    # messages; two async receives posted meanwhile (the first waiting for the turn) get them
    # in their posting order: a, then b (MPI's non-overtaking rule).
    def rank(g):
        if g.rank() == 0:
            rd.recv(1, np.int64, 1, group=g)  # rank 1's receives are posted
            rd.send(np.array([1]), 1, tag=1, group=g)
            rd.send(np.array([2]), 1, tag=1, group=g)
            rd.send(np.array([9]), 1, tag=2, group=g)
            return None
        if g.rank() == 2:
            return None
        t = threading.Thread(target=lambda: rd.recv(1, np.int64, 0, tag=2, group=g))
        t.start()
        deadline = time.monotonic() + 10
        while not g.p2p_busy(0, False) and time.monotonic() < deadline:
            time.sleep(0.005)
        first = rd.recv(1, np.int64, 0, tag=1, group=g, async_op=True)
        if later == "recv":
            second = rd.recv(1, np.int64, 0, tag=1, group=g, async_op=True)
        else:
            second = rd.recv_any(1, np.int64, tag=1, group=g, async_op=True)
        time.sleep(0.1)  # both waiting on the progress thread
        rd.send(np.zeros(1, np.int64), 0, group=g)
        a = first.wait(timeout=10)
        b = second.wait(timeout=10)
        t.join(10)
        return int(a[0]), int((b if later == "recv" else b[1])[0])

    assert run_ranks(3, rank)[1] == (1, 2)


def test_messages_kept_when_a_group_closes_are_let_go():
    def rank(g):
        if g.rank() == 0:
            rd.send(np.zeros(1 << 20), 1, tag=1, group=g)
            rd.send(np.zeros(1), 1, tag=2, group=g)
            rd.barrier(group=g)
            return None
        rd.recv(1, np.float64, 0, tag=2, group=g)
        kept = g.held.count()
        rd.barrier(group=g)
        g.close()
        return kept, g.held.count()

    assert run_ranks(2, rank)[1] == (1, 0)


def _plan(seed: int, senders: list[int], count: int):
    """Random tagged messages from each sender, and receives for rank 0 in a random posting
    order that MPI's matching serves whole: each takes the oldest remaining message from its
    source with its tag (or any tag), as simulated here; with what each receive gets."""
    rng = np.random.default_rng(seed)
    sent = {s: [(int(rng.integers(0, 4)), bool(rng.random() < 0.25), int(rng.choice([1, 3, 70_000])), k)
                for k in range(count)] for s in senders}  # (tag, object?, elements, index)
    left = {s: list(msgs) for s, msgs in sent.items()}
    receives = []
    while any(left.values()):
        s = int(rng.choice([s for s in senders if left[s]]))
        pick = left[s][int(rng.integers(0, len(left[s])))]
        tag = rd.ANY_TAG if rng.random() < 0.3 else pick[0]
        taken = next(m for m in left[s] if tag == rd.ANY_TAG or m[0] == tag)  # the oldest that matches
        left[s].remove(taken)
        receives.append((s, tag, taken, bool(rng.random() < 0.5), bool(rng.random() < 0.5)))  # async? exact?
    return sent, receives


def _payload(s: int, msg: tuple) -> np.ndarray:
    tag, _, n, k = msg
    return np.full(n, s * 1000 + k * 10 + tag, dtype=np.int64)


@pytest.mark.parametrize("seed", range(12))
def test_random_tags_blocking_and_async_receives_match_as_mpi_does(seed):
    senders = [1, 2]
    sent, receives = _plan(seed, senders, 30)

    def rank(g):
        r = g.rank()
        if r != 0:
            works = []
            for msg in sent[r]:
                tag, is_object, _, _ = msg
                if is_object:
                    works.append(rd.send_object({"from": r, "k": msg[3]}, 0, tag=tag, group=g, async_op=True))
                else:
                    works.append(rd.send(_payload(r, msg), 0, tag=tag, group=g, async_op=True))
            rd.wait_all(works, timeout=30)
            return None
        got, pending = [], []
        for s, tag, taken, use_async, exact in receives:
            st = rd.Status()
            if taken[1]:
                call = lambda a: rd.recv_object(s, tag=tag, status=st, group=g, async_op=a)  # noqa: E731
            elif exact:
                call = lambda a: rd.recv(taken[2], np.int64, s, tag=tag, status=st, group=g, async_op=a)  # noqa: E731
            else:
                call = lambda a: rd.recv(None, None, s, tag=tag, status=st, group=g, async_op=a)  # noqa: E731
            if use_async:
                pending.append((len(got), call(True), st))
                got.append(None)
            else:
                got.append((call(False), st))
        for i, work, st in pending:
            got[i] = (work.wait(timeout=30), st)
        return got

    got = run_ranks(3, rank, timeout=120)[0]
    for (s, tag, taken, _, _), (value, st) in zip(receives, got):
        assert (st.source, st.tag) == (s, taken[0])
        if taken[1]:
            assert value == {"from": s, "k": taken[3]}
        else:
            np.testing.assert_array_equal(value, _payload(s, taken))


def test_an_any_source_receive_reading_another_sender_is_owed_the_kept_message_of_its_tag():
    # j1 and j2 wait for tag 7 from anyone, in that order. j1 is reading rank 2's 64 MiB
    # message (another tag) when rank 1's A (tag 7) is read, and kept, by the receive ahead of
    # them in rank 1's lane: A is j1's once it gives rank 2 back, not j2's; B comes later.
    def rank(g):
        r = g.rank()
        if r == 2:
            time.sleep(0.3)
            rd.send(np.zeros(8 << 20), 0, tag=9, group=g)
        elif r == 1:
            time.sleep(0.33)
            rd.send(np.array([1]), 0, tag=7, group=g)  # A
            rd.recv(1, np.int64, 0, group=g)
            rd.send(np.array([2]), 0, tag=7, group=g)  # B
            rd.send(np.array([0]), 0, tag=5, group=g)
        else:
            h = rd.recv(1, np.int64, 1, tag=5, group=g, async_op=True)
            j1 = rd.recv_any(None, None, tag=7, group=g, async_op=True)
            j2 = rd.recv_any(None, None, tag=7, group=g, async_op=True)
            a = j1.wait(timeout=20)
            rd.send(np.zeros(1, np.int64), 1, group=g)
            b = j2.wait(timeout=20)
            h.wait(timeout=20)
            rd.recv(None, None, 2, tag=9, group=g)
            return int(a[1][0]), int(b[1][0])
        return None

    assert run_ranks(3, rank, timeout=90)[0] == (1, 2)


def test_an_any_source_receive_leading_one_lane_takes_what_another_sender_s_lane_kept():
    # The receive for tag 9 from rank 1 leads rank 1's lane and keeps rank 1's tag-5 message;
    # a recv_any for tag 5 posted then leads rank 2's lane only: it must be offered that message.
    def rank(g):
        if g.rank() == 0:
            nine = rd.recv(1, np.float64, 1, tag=9, group=g, async_op=True)
            deadline = time.monotonic() + 10
            while g.held.count() < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            src, five = rd.recv_any(1, np.float64, tag=5, group=g, async_op=True).wait(timeout=10)
            rd.send(np.zeros(1, np.int8), 1, group=g)
            return src, five.tolist(), nine.wait(timeout=10).tolist()
        if g.rank() == 1:
            rd.send(np.full(1, 5.0), 0, tag=5, group=g)
            rd.recv(1, np.int8, 0, group=g)
            rd.send(np.full(1, 9.0), 0, tag=9, group=g)
        return None

    assert run_ranks(3, rank, settings=Settings(timeout=10.0, connect_timeout=10.0))[0] == (1, [5.0], [9.0])


def test_a_kept_message_owed_to_an_any_source_receive_goes_on_once_it_takes_another():
    # Rank 1's lane: the receive for tag 9 (reading), X = recv_any(tag 5), J = recv(1, tag 5).
    # If X is reading rank 2's large tag-5 message when rank 1's first tag-5 message is kept,
    # that message is X's until X completes from rank 2; then it is J's (the oldest of rank 1's).
    def rank(g):
        r = g.rank()
        if r == 0:
            nine = rd.recv(1, np.float64, 1, tag=9, group=g, async_op=True)
            x = rd.recv_any(None, np.float64, tag=5, group=g, async_op=True)
            j = rd.recv(None, np.float64, 1, tag=5, group=g, async_op=True)
            rd.barrier(group=g)
            src, _ = x.wait(timeout=20)
            got = j.wait(timeout=20)
            rd.send(np.zeros(1, np.int8), 1, group=g)
            later = rd.recv(None, np.float64, 1 if src == 2 else 2, tag=5, group=g)  # the one neither took
            nine.wait(timeout=20)
            return src, float(got[0]), float(later[0])
        rd.barrier(group=g)
        if r == 2:
            rd.send(np.full(8 << 20, 2.0), 0, tag=5, group=g)
        if r == 1:
            time.sleep(0.03)
            rd.send(np.full(1, 1.0), 0, tag=5, group=g)
            rd.send(np.full(1, 1.5), 0, tag=5, group=g)
            rd.recv(1, np.int8, 0, group=g)
            rd.send(np.full(1, 9.0), 0, tag=9, group=g)
        return None

    src, got, later = run_ranks(3, rank, settings=Settings(timeout=10.0, connect_timeout=10.0), timeout=90)[0]
    assert (src, got, later) in ((2, 1.0, 1.5), (1, 1.5, 2.0)), (src, got, later)


def test_a_send_returns_its_array_blocking_queued_or_from_its_work():
    # As MLX's send: x comes back once sent, whichever way the send ran (inline; queued behind
    # an outstanding isend; a Work's wait()); a sendrecv that only sends still gives None.
    def rank(g):
        x, y = np.arange(4.0), np.ones(3)
        if g.rank() == 0:
            w = rd.send(y, 1, group=g, async_op=True)
            queued = rd.send(x, 1, group=g)
            only_sent = rd.sendrecv(x, 1, None, group=g, async_op=True).wait()  # (a receive from nobody's None)
            return [queued is x, w.wait() is y, rd.send(x, 1, group=g) is x, only_sent]
        return [rd.recv((3,), np.float64, 0, group=g).tolist()] + [rd.recv_like(x, 0, group=g).tolist() for _ in range(3)]

    assert run_ranks(2, rank) == [[True, True, True, None], [[1.0] * 3] + [[0.0, 1.0, 2.0, 3.0]] * 3]


def test_messages_read_ahead_are_offered_to_posted_receives_in_about_one_look_each(monkeypatch):
    """K messages of tag 9, then K of tag 0; the receiver posts K receives of tag 0, then K of
    tag 9. Every tag-9 message is read ahead and kept, and was offered to every receive posted,
    each searching every kept message: quadratic (2 x 2,000 took 38 s; 2 x 8,000 with tags one
    off, 6 s). Now a receive whose tag no kept message has is passed over without a search, and
    the offer stops once nothing is kept. Counted: searches of the kept messages
    (`Held._take`), not time."""
    from ringdist.tags import Held

    searches = [0]
    real = Held._take

    def counted(self, *args):
        searches[0] += 1
        return real(self, *args)

    monkeypatch.setattr(Held, "_take", counted)
    k = 200

    def rank(g: rd.Group):
        if g.rank() == 0:
            rd.wait_all([rd.send(np.array([i]), 1, tag=9 if i < k else 0, group=g, async_op=True)
                         for i in range(2 * k)])
            return None
        got = rd.wait_all([rd.recv((1,), np.int64, 0, tag=0 if i < k else 9, group=g, async_op=True)
                           for i in range(2 * k)])
        return [int(x[0]) for x in got]

    assert run_ranks(2, rank, shm=False)[1] == list(range(k, 2 * k)) + list(range(k))
    assert searches[0] < 10 * k, searches[0]
