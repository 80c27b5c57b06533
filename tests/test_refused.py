"""A collective one rank refuses (an argument fails its checks there) fails on every rank, at once.

The rank with the bad argument raises its TypeError or ValueError before the call takes a
number; the others, already in the call or about to be, are told with an ABORT of that call
and raise a RingError naming the rank and the problem, instead of waiting out their timeout.
The group is broken everywhere afterwards, as after any failed collective.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import ringdist as rd
from harness import run_ranks
from helpers import SCRIPTS, run_launcher

BAD = 1  # the rank that passes the bad argument
HUGE = np.dtype([(f"field_{i:05d}_" + "x" * 40, "u1") for i in range(700)])  # a description past 32 KiB


def _cases(n: int) -> dict:
    """name -> (call with rank BAD's bad argument, the same call as every other rank makes it, words)."""
    good = np.arange(2 * n, dtype=np.float64)
    return {
        "all_sum object array": (lambda g: rd.all_sum(np.array([1, None], dtype=object), group=g),
                                 lambda g: rd.all_sum(good[:2], group=g), "object arrays are not supported"),
        "all_max of strings": (lambda g: rd.all_max(np.array(["a", "b"]), group=g),
                               lambda g: rd.all_max(good[:2], group=g), "all_max: dtype <U1 is not numeric"),
        "all_gather ragged list": (lambda g: rd.all_gather([[1, 2], [3]], group=g),
                                   lambda g: rd.all_gather(good[:2], group=g), "inhomogeneous"),
        "all_gather dtype too long": (lambda g: rd.all_gather(np.zeros(2, dtype=HUGE), group=g),
                                      lambda g: rd.all_gather(np.zeros(2, dtype=np.uint8), group=g), "32768"),
        "uneven all_gather object": (lambda g: rd.all_gather(np.array([None]), uneven=True, group=g),
                                     lambda g: rd.all_gather(good[:3], uneven=True, group=g),
                                     "object arrays are not supported"),
        "gather root out of range": (lambda g: rd.gather(good, root=n, group=g),
                                     lambda g: rd.gather(good, root=0, group=g), f"root {n} is not a rank"),
        "reduce op mean": (lambda g: rd.reduce(good, op="mean", group=g),
                           lambda g: rd.reduce(good, group=g), "op must be one of sum, max, min, prod"),
        "scan op avg": (lambda g: rd.scan(good, op="avg", group=g),
                        lambda g: rd.scan(good, group=g), "op must be one of sum, max, min, prod"),
        "all_reduce op mean": (lambda g: rd.all_reduce(good, op="mean", group=g),
                              lambda g: rd.all_reduce(good, group=g), "all_reduce: op must be one of sum, max"),
        "all_reduce band of floats": (lambda g: rd.all_reduce(good, "band", group=g),
                                      lambda g: rd.all_reduce(good.astype(np.int64), "band", group=g),
                                      "all_reduce(op='band'): numpy cannot reduce dtype float64 with bitwise_and"),
        "reduce_scatter op None": (lambda g: rd.reduce_scatter(good[:n], None, group=g),
                                   lambda g: rd.reduce_scatter(good[:n], "max", group=g),
                                   "reduce_scatter: op must be one of sum, max"),
        "max_scatter rows": (lambda g: rd.reduce_scatter(good[:n + 1], "max", group=g),
                             lambda g: rd.reduce_scatter(good[:n], "max", group=g),
                             "reduce_scatter(op='max'): x.shape[0] = "),
        "scan exclusive 1": (lambda g: rd.scan(good, exclusive=1, group=g),
                             lambda g: rd.scan(good, exclusive=True, group=g), "exclusive must be True or False"),
        "broadcast None off the root": (lambda g: rd.broadcast(None, group=g),
                                        lambda g: rd.broadcast(good, group=g),
                                        "broadcast: None is not an array (every rank passes an array of the root's"),
        "broadcast root -1": (lambda g: rd.broadcast(good, root=-1, group=g),
                              lambda g: rd.broadcast(good, group=g), "root -1 is not a rank"),
        "sum_scatter rows": (lambda g: rd.sum_scatter(good[:n + 1], group=g),
                             lambda g: rd.sum_scatter(good[:n], group=g), "is not divisible by the group size"),
        "all_to_all rows": (lambda g: rd.all_to_all(good[:n + 1], group=g),
                            lambda g: rd.all_to_all(good[:n], group=g), "is not divisible by the group size"),
        "all_to_all splits": (lambda g: rd.all_to_all(good[:n], splits=[n], group=g),
                              lambda g: rd.all_to_all(good[:n], splits=[1] * n, group=g),
                              "splits must be"),
        "scatter root on a non-root": (lambda g: rd.scatter(None, root="0", group=g),
                                       lambda g: rd.scatter(good[:n] if g.rank() == 0 else None, group=g),
                                       "root '0' is not a rank"),
        "uneven scatter of an array": (lambda g: rd.scatter(good, root=BAD, uneven=True, group=g),
                                       lambda g: rd.scatter(None, root=BAD, uneven=True, group=g),
                                       "with uneven=True the root passes a list of"),
        "uneven scatter of unlike blocks": (lambda g: rd.scatter([good[:q].reshape(q, 1) if q else good[:1] for q in
                                                                  range(n)], root=BAD, uneven=True, group=g),
                                            lambda g: rd.scatter(None, root=BAD, uneven=True, group=g),
                                            "blocks may differ in rows only"),
        "all_gather uneven 'yes'": (lambda g: rd.all_gather(good, uneven="yes", group=g),
                                    lambda g: rd.all_gather(good, uneven=True, group=g),
                                    "uneven must be True or False"),
        "scatter of None at the root": (lambda g: rd.scatter(None, root=BAD, group=g),
                                        lambda g: rd.scatter(None, root=BAD, group=g),
                                        "the root passes the array to scatter, got None"),
        "all_gather async_op 'False'": (lambda g: rd.all_gather(good, async_op="False", group=g),
                                        lambda g: rd.all_gather(good, group=g), "async_op must be True or False"),
        "all_sum async_op None": (lambda g: rd.all_sum(good, async_op=None, group=g),
                                  lambda g: rd.all_sum(good, async_op=True, group=g).wait(),
                                  "async_op must be True or False"),
        "gather uneven 1": (lambda g: rd.gather(good, uneven=1, group=g),
                            lambda g: rd.gather(good, uneven=True, group=g), "uneven must be True or False"),
        "scatter_object count": (lambda g: rd.scatter_object([0] * (n + 1), root=BAD, group=g),
                                 lambda g: rd.scatter_object(None, root=BAD, group=g),
                                 f"the root passes {n} objects, one for each rank, got {n + 1}"),
        "broadcast_object root": (lambda g: rd.broadcast_object({"a": 1}, root=2.0, group=g),
                                  lambda g: rd.broadcast_object({"a": 1}, group=g), "root 2.0 is not a rank"),
        "barrier timeout": (lambda g: rd.barrier(group=g, timeout=-1),
                            lambda g: rd.barrier(group=g), "barrier: timeout must be a positive number"),
        "split color": (lambda g: g.split("red"), lambda g: g.split(0), "color must be an integer"),
        "all_gather no memory": (lambda g: rd.all_gather(np.broadcast_to(np.zeros(1), (1 << 42,)), group=g),
                                 lambda g: rd.all_gather(np.zeros(1), group=g),
                                 "Unable to allocate"),
        "broadcast no memory": (lambda g: rd.broadcast(np.broadcast_to(np.zeros(1), (1 << 42,)), group=g),
                                lambda g: rd.broadcast(np.zeros(2), group=g),
                                "Unable to allocate"),
    }


CASES = sorted(_cases(2))
ROOTED = ("gather root out of range", "reduce op mean", "scatter root on a non-root")  # root 0 for the others
CHAINED = ("scan op avg", "scan exclusive 1")  # over TCP past 8 ranks: a chain from rank 0, which waits for no one after it


@pytest.mark.parametrize("n,shm", [(3, True), (3, False), (10, True), (10, False)],
                         ids=["3-shm", "3-tcp", "10-shm", "10-tcp"])
@pytest.mark.parametrize("case", CASES)
def test_an_argument_one_rank_gets_wrong_fails_the_call_on_every_rank(case, n, shm):
    bad, good, words = _cases(n)[case]

    def rank(g: rd.Group):
        rd.all_sum(np.ones(2), group=g)  # the group's links are up and in use
        start = time.monotonic()
        try:
            (bad if g.rank() == BAD else good)(g)
            outcome = "returned"
        except Exception as exc:  # noqa: BLE001 - every rank's outcome is checked below
            outcome = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - start
        try:
            rd.all_sum(np.ones(2), group=g, timeout=5)
            after = "returned"
        except rd.RingError as exc:
            after = f"{type(exc).__name__}: {exc}"
        return outcome, took, after

    got = run_ranks(n, rank, timeout=120, shm=shm)
    mine, _, _ = got[BAD]
    assert mine.startswith(("TypeError: ", "ValueError: ", "MemoryError: ")) and words in mine, got[BAD]
    for r, (outcome, took, after) in enumerate(got):
        assert took < 10, (r, took, outcome)  # told, not timed out (the timeout is 20 s)
        if r == BAD:
            assert after.startswith("GroupBrokenError: ") and words in after, (r, after)
        elif outcome == "returned" and ((case in ROOTED and r != 0) or (case in CHAINED and r < BAD)):
            # A tree's leaf or a scatter's receiver may finish its part (its result is right)
            # before the ABORT reaches it, and so may a scan's ranks before the one that failed:
            # its next call on the group raises it.
            assert after.startswith("RingError: ") and f"aborted by rank {BAD}: " in after and words in after, \
                (r, after)
        else:
            assert outcome.startswith(f"RingError: rank {r}: ") and f"aborted by rank {BAD}: " in outcome, (r, outcome)
            assert words in outcome, (r, outcome)
            assert after.startswith("GroupBrokenError: ") and words in after, (r, after)


def test_a_group_of_one_stays_usable_after_a_refused_call():
    def rank(g: rd.Group):
        with pytest.raises(ValueError, match="root 3 is not a rank"):
            rd.broadcast(np.ones(2), root=3, group=g)
        return rd.all_sum(np.ones(2), group=g)

    assert run_ranks(1, rank)[0].tolist() == [1.0, 1.0]


def test_a_refused_call_on_a_broken_group_raises_its_own_error():
    def rank(g: rd.Group):
        try:
            rd.all_max(np.zeros(3) if g.rank() else np.zeros(4), group=g)  # a mismatch breaks the group
        except rd.MismatchError:
            pass
        with pytest.raises(TypeError, match="object arrays are not supported"):
            rd.all_sum(np.array([None]), group=g)
        with pytest.raises(rd.GroupBrokenError):
            rd.all_sum(np.ones(2), group=g)

    run_ranks(2, rank)


def test_a_timeout_past_floats_range_is_no_limit():
    assert run_ranks(2, lambda g: rd.all_sum(np.ones(2), group=g, timeout=10 ** 400).tolist()) == [[2.0, 2.0]] * 2
    work = rd.all_sum(np.ones(2), async_op=True)  # the world of one, on the progress thread
    assert work.wait(timeout=10 ** 400).tolist() == [1.0, 1.0]


def _outcomes(stdout: str) -> dict[tuple[int, str], str]:
    return {(int(r), what): how for r, what, how in re.findall(r"^\[(\d+)\] outcome (\w+): (.*)$", stdout, re.M)}


@pytest.mark.parametrize("case", ["split-small", "split-large", "async-dtype"])
def test_a_refused_call_behind_async_work_fails_in_its_turn_on_every_rank(case):
    # The earlier async call completes everywhere; the refused one fails on every rank.
    res = run_launcher(["-n", "3", str(SCRIPTS / "refused_async.py"), case], timeout=90,
                       env={"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"})
    assert res.returncode == 0, res.stdout + res.stderr
    got = _outcomes(res.stdout)
    first, then, bad = ("earlier", "split", 0) if case.startswith("split") else ("good", "bad", 1)
    words = "color must be an integer" if bad == 0 else "object arrays are not supported"
    for r in range(3):
        assert got[(r, first)] == "ok", res.stdout
        mine = got[(r, then)]
        assert (mine.startswith("TypeError: ") if r == bad else
                mine.startswith(f"RingError: rank {r}: ") and f"aborted by rank {bad}: TypeError: " in mine), mine
        assert words in mine, mine
    assert len(re.findall(r"^\[\d\] group broken$", res.stdout, re.M)) == 3, res.stdout


def test_a_refused_call_from_a_second_thread_fails_the_running_call():
    res = run_launcher(["-n", "3", str(SCRIPTS / "refused_async.py"), "thread"], timeout=90,
                       env={"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"})
    assert res.returncode == 0, res.stdout + res.stderr
    got = _outcomes(res.stdout)
    assert got[(0, "thread")].startswith("TypeError: rank 0: all_gather: ") and "object arrays" in got[(0, "thread")]
    assert got[(0, "all_sum")].startswith("MismatchError: rank 0: all_gather on group 'world' from thread"), got
    for r in (1, 2):  # in their all_sum, or at the next call if it completed before rank 0's failed
        told = got[(r, "all_sum")] if got[(r, "all_sum")] != "ok" else got[(r, "next")]
        assert told.startswith(f"MismatchError: rank {r}: ") and "aborted by rank 0" in told, got
    assert len(re.findall(r"^\[\d\] group broken$", res.stdout, re.M)) == 3, res.stdout


@pytest.mark.parametrize("call", [
    lambda g: rd.send(np.ones(2), 1, async_op="no", group=g),
    lambda g: rd.recv(2, np.float64, 1, async_op=0, group=g),
    lambda g: rd.sendrecv(np.ones(2), 1, 1, async_op=None, group=g),
    lambda g: rd.send_object("x", 1, async_op="True", group=g),
])
def test_a_message_whose_async_op_is_not_a_bool_is_refused_and_sends_nothing(call):
    """A message's async_op other than True or False (a string from a config file, None) raises
    TypeError on its rank before anything is sent (a "False" would otherwise give a Work where the
    peer's call gives an array); like its other arguments, it leaves the pair in step."""
    def rank(g: rd.Group):
        if g.rank() == 0:
            with pytest.raises(TypeError, match=r"^rank 0: \w+: async_op must be True or False, got "):
                call(g)
            rd.send(np.array([2.5]), 1, group=g)
            return rd.recv(1, np.float64, 1, group=g).tolist()
        got = rd.recv(1, np.float64, 0, group=g).tolist()
        rd.send(np.array([3.5]), 0, group=g)
        return got

    assert run_ranks(2, rank) == [[3.5], [2.5]]


def test_a_bad_async_op_behind_outstanding_work_is_refused_in_its_turn():
    """A collective's bad async_op issued while the group has async work outstanding is refused
    in its turn, as a bad root is: the work issued before it completes alike on every rank, and
    only the refused call fails, on both ranks, with the refusing rank's error."""
    def rank(g: rd.Group):
        x = np.ones(4)
        if g.rank() == 0:
            w = rd.all_sum(x, async_op=True, group=g)
            with pytest.raises(TypeError, match=r"^rank 0: broadcast: async_op must be True or False, got 'no'$"):
                rd.broadcast(x, async_op="no", group=g)
            return w.wait().tolist()
        first = rd.all_sum(x, group=g).tolist()
        with pytest.raises(rd.RingError, match=r"broadcast aborted by rank 0: TypeError: rank 0: broadcast: async_op"):
            rd.broadcast(x, group=g)
        return first

    assert run_ranks(2, rank) == [[2.0] * 4] * 2
