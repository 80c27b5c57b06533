"""all_gather_object, broadcast_object, send_object/recv_object at N = 1..17 in-process (real
sockets), on the table's path and on the ring; arrays inside objects travel out of band
(unpickled as views of the buffer they landed in); RINGDIST_MAX_OBJECT_BYTES bounds what a
sender sends and what a receiver accepts; a failure on one rank reaches every rank."""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time

import numpy as np
import pytest

import ringdist as rd

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, run_launcher

# tcp: past 8 ranks, Bruck's steps where shared memory would take the rest
VARIANTS = {"default": {}, "ring": {"direct_max": 0}, "tcp": {"shm": False}}


def thing(rank: int) -> dict:
    """A picklable object with arrays of several sizes (one past a 64 KiB frame) and plain values."""
    return {"rank": rank, "name": f"r{rank}" * rank, "small": np.arange(rank, dtype=np.int16),
            "big": np.full(20_000 + rank, rank, dtype=np.float64), "nested": [(rank, None), {"k": b"x" * rank}]}


def same(a: dict, b: dict) -> bool:
    return (a.keys() == b.keys() and a["rank"] == b["rank"] and a["name"] == b["name"] and a["nested"] == b["nested"]
            and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in ("small", "big")))


def calls(g: rd.Group) -> dict:
    r, n = g.rank(), g.size()
    root = n // 2
    out = {"all_gather_object": rd.all_gather_object(thing(r), group=g),
           "broadcast_object": rd.broadcast_object(thing(r) if r == root else "ignored", root=root, group=g),
           "none": rd.all_gather_object(None, group=g)}
    if n > 1:
        dst, src = (r + 1) % n, (r - 1) % n
        if r % 2 == 0:
            rd.send_object(thing(r), dst, group=g)
            out["recv_object"] = rd.recv_object(src, group=g)
        else:
            out["recv_object"] = rd.recv_object(src, group=g)
            rd.send_object(thing(r), dst, group=g)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n", range(1, 18))
def test_object_collectives(n, variant):
    results = run_ranks(n, calls, **VARIANTS[variant])
    root = n // 2
    for r, got in enumerate(results):
        where = f"N={n}, rank {r}"
        assert len(got["all_gather_object"]) == n and all(same(o, thing(q)) for q, o in enumerate(got["all_gather_object"])), where
        assert same(got["broadcast_object"], thing(root)), where
        assert got["none"] == [None] * n, where
        if n > 1:
            assert same(got["recv_object"], thing((r - 1) % n)), where


def test_arrays_inside_objects_land_out_of_band_and_own_copies_share_nothing():
    def rank(g):
        mine = {"a": np.arange(100_000, dtype=np.float32) + g.rank()}
        got = rd.all_gather_object(mine, group=g)
        if g.rank() == 0:
            rd.send_object(mine, 1, group=g)
            return got, None, mine
        return got, rd.recv_object(0, group=g), mine

    results = run_ranks(2, rank)
    for r, (got, received, mine) in enumerate(results):
        other = got[1 - r]["a"]
        # Pickled in band, numpy makes an array that owns a copy of its bytes; out of band it
        # is a view of the receive buffer.
        assert not other.flags.owndata and other.base is not None and other.flags.writeable, r
        assert np.array_equal(other, np.arange(100_000, dtype=np.float32) + 1 - r)
        assert not np.shares_memory(got[r]["a"], mine["a"]), r  # this rank's own entry is a copy
    assert not results[1][1]["a"].flags.owndata
    assert np.array_equal(results[1][1]["a"], np.arange(100_000, dtype=np.float32))  # rank 0's object


@pytest.mark.parametrize("n", [1, 2])
def test_the_root_of_broadcast_object_gets_a_copy_as_every_rank_does(n):
    def rank(g):
        mine = {"a": np.arange(1000, dtype=np.float64)} if g.rank() == 0 else None
        got = rd.broadcast_object(mine, root=0, group=g)
        return mine, got

    for r, (mine, got) in enumerate(run_ranks(n, rank)):
        assert np.array_equal(got["a"], np.arange(1000, dtype=np.float64)), r
        if r == 0:
            assert got is not mine and not np.shares_memory(got["a"], mine["a"])
            got["a"][:] = -1  # the caller's object is untouched
            assert np.array_equal(mine["a"], np.arange(1000, dtype=np.float64))


@pytest.mark.parametrize("n, shm", [(3, True), (9, True), (9, False)])
def test_an_object_over_the_cap_fails_on_the_sender_naming_the_variable_and_on_every_peer(n, shm):
    # 9 ranks: past the mesh, through shared memory (each stream's fields at its head), or Bruck's steps.
    # Every rank read the sender's header saying why: every rank raises in the call, the group in step.
    outcomes: list = [None] * n

    def rank(g):
        big = np.zeros(2000, dtype=np.uint8) if g.rank() == 1 else None
        try:
            rd.all_gather_object(big, group=g)
        except (ValueError, rd.RingError) as exc:
            outcomes[g.rank()] = exc
        return rd.all_gather_object(g.rank(), group=g)

    after = run_ranks(n, rank, max_object_bytes=1000, shm=shm)
    assert isinstance(outcomes[1], ValueError), outcomes
    assert re.fullmatch(r"rank 1: all_gather_object: the pickled object is \d{4} bytes, over "
                        r"RINGDIST_MAX_OBJECT_BYTES=1000", str(outcomes[1])), outcomes
    for r in [q for q in range(n) if q != 1]:
        assert type(outcomes[r]) is ValueError and str(outcomes[r]) == (
            f"rank {r}: all_gather_object failed on rank 1: {outcomes[1]}"), outcomes
    assert after == [list(range(n))] * n


@pytest.mark.parametrize("cap", [1e20, float((1 << 63) - 1)])
def test_a_cap_past_int64_is_no_limit_for_every_object_call(cap):
    # RINGDIST_MAX_OBJECT_BYTES=1e20 ("no limit"): the rooted calls' agreement step carries every
    # rank's cap as an int64, which raised OverflowError on every rank and broke the group.
    def rank(g):
        objs = [{"to": p} for p in range(g.size())] if g.rank() == 0 else None
        return (rd.all_gather_object(g.rank(), group=g), rd.gather_object(g.rank(), 0, group=g),
                rd.scatter_object(objs, 0, group=g), rd.gather_object(g.rank(), 1, group=g, async_op=True).wait())

    got = run_ranks(3, rank, max_object_bytes=cap)
    for r, (every, gathered, scattered, later) in enumerate(got):
        assert every == [0, 1, 2] and scattered == {"to": r}, got
        assert gathered == ([0, 1, 2] if r == 0 else None) and later == ([0, 1, 2] if r == 1 else None), got


def test_a_receiver_refuses_an_object_over_its_own_cap_from_the_header():
    def rank(g):
        if g.rank() == 1:
            g.settings = dataclasses.replace(g.settings, max_object_bytes=50_000)
            return rd.recv_object(0, group=g, timeout=10)
        rd.send_object(np.zeros(1 << 20, dtype=np.uint8), 1, group=g, timeout=10)

    with pytest.raises(RankFailed) as info:
        run_ranks(2, rank)
    error = info.value.errors[1]
    assert isinstance(error, rd.RingError), info.value.errors
    assert "declares a 1048" in str(error) and "over RINGDIST_MAX_OBJECT_BYTES=50000 here" in str(error), error


def test_an_object_over_a_receiver_s_own_cap_is_refused_by_its_sender_and_every_rank_goes_on():
    # Each rank's RINGDIST_MAX_OBJECT_BYTES is in the rendezvous's table: a sender refuses an
    # object over a receiver's as over its own, so every rank raises ValueError alike. Receivers
    # that refused it from the header broke the group (broadcast_object, all_gather_object), and
    # a kept message of another tag broke a receive that did not ask for it.
    res = run_launcher(["-n", "3", str(SCRIPTS / "object_caps.py")], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # A cap past what the table can carry (an int of 2^64 or more: "no limit") is left out of it.
    unbounded = run_launcher(["-n", "2", "--", sys.executable, "-c", "import ringdist as rd; "
                              "print(rd.all_gather_object(rd.init().rank()))"], timeout=120,
                             env={"RINGDIST_MAX_OBJECT_BYTES": "1e20"})
    assert unbounded.returncode == 0 and unbounded.stdout.count("[0, 1]") == 2, unbounded.stdout + unbounded.stderr
    said = {(int(m[1]), m[2], m[3]): m[4] for m in re.finditer(
        r"^\[(\d)\] (world|split) (\w+(?: small)?) (.*)$", res.stdout, re.M)}
    over = "the pickled object is 100009 bytes, over rank 0's RINGDIST_MAX_OBJECT_BYTES=100000"
    for where in ("world", "split"):
        for r in range(3):
            for call, sender in (("broadcast_object", 1), ("all_gather_object", 2)):
                whose = "" if r == sender else f" failed on rank {sender}: rank {sender}: {call}"
                assert said[r, where, call] == f"ValueError: rank {r}: {call}{whose}: {over}", said
            assert said[r, where, "gather_object"].startswith(
                f"ValueError: rank {r}: gather_object: rank 1's object for rank 0 "), said
            assert said[r, where, "after"] == "ok", said
        assert said[1, where, "send_object"] == f"ValueError: rank 1: send_object: {over}", said
        assert said[0, where, "recv_object small"] == "ok", said
        assert said[0, where, "recv_object"] == (f"ValueError: rank 0: recv_object: rank 1 could not send its "
                                                 f"object: rank 1: send_object: {over}"), said


@pytest.mark.parametrize("n, shm", [(2, True), (9, True), (9, False)])
def test_an_unpicklable_object_fails_on_every_rank_and_the_group_stays_usable(n, shm):
    # As an object that cannot be unpickled: every rank raises ValueError in the call, naming
    # the rank and its error, and the next calls go on in step.
    outcomes: list = [None] * n

    def rank(g):
        got = []
        for call in (lambda: rd.broadcast_object((lambda: 0) if g.rank() == 0 else None, group=g),
                     lambda: rd.all_gather_object(threading.Lock() if g.rank() == n - 1 else 0, group=g)):
            try:
                call()
            except (ValueError, rd.RingError) as exc:
                got.append(exc)
        outcomes[g.rank()] = got
        return rd.all_gather_object(g.rank(), group=g)

    after = run_ranks(n, rank, shm=shm)
    last = n - 1
    for k, (op, sender, why) in enumerate([("broadcast_object", 0, "AttributeError: Can't (pickle|get) local object"),
                                           ("all_gather_object", last, "TypeError: cannot pickle '_thread.lock'")]):
        own = outcomes[sender][k]
        assert type(own) is ValueError and re.match(
            f"rank {sender}: {op}: the object cannot be pickled: {why}", str(own)), outcomes
        for r in [q for q in range(n) if q != sender]:
            assert type(outcomes[r][k]) is ValueError and str(outcomes[r][k]) == (
                f"rank {r}: {op} failed on rank {sender}: {own}"), outcomes
    assert after == [list(range(n))] * n


def test_an_unpicklable_message_fails_on_both_ends_and_the_pair_stays_in_step():
    def rank(g):
        if g.rank() == 0:
            with pytest.raises(ValueError) as info:
                rd.send_object(threading.Lock(), 1, group=g, timeout=10)
            rd.send_object("next", 1, group=g, timeout=10)
            return str(info.value)
        with pytest.raises(ValueError) as info:
            rd.recv_object(0, group=g, timeout=10)
        return str(info.value), rd.recv_object(0, group=g, timeout=10)

    sent, (received, following) = run_ranks(2, rank)
    assert sent == "rank 0: send_object: the object cannot be pickled: TypeError: cannot pickle '_thread.lock' object"
    assert received == f"rank 1: recv_object: rank 0 could not send its object: {sent}"
    assert following == "next"


def _value_errors(calls) -> list:
    """Each call's ValueError text, or None where it returned."""
    found = []
    for call in calls:
        try:
            call()
            found.append(None)
        except ValueError as exc:
            found.append(str(exc))
    return found


class _BadFileName:
    """Cannot be pickled, and says so with a lone surrogate (an undecodable file name), which
    cannot travel as UTF-8 as it is: the failure's text failed to encode into the header."""

    def __reduce__(self):
        raise OSError("cannot read /data/\udcff.bin")


def test_a_pickling_failure_whose_text_cannot_be_encoded_is_still_told_and_the_group_goes_on():
    def rank(g):
        got = _value_errors((
            lambda: rd.all_gather_object(_BadFileName() if g.rank() == 1 else 0, group=g),
            lambda: rd.send_object(_BadFileName(), 1, group=g) if g.rank() == 0 else rd.recv_object(0, group=g)))
        return got, rd.all_gather_object(g.rank(), group=g)

    (gathered0, sent), (gathered1, received) = [got for got, _ in run_ranks(2, rank)]
    why = "the object cannot be pickled: OSError: cannot read /data/\\udcff.bin"
    assert gathered1 == f"rank 1: all_gather_object: {why}"
    assert gathered0 == f"rank 0: all_gather_object failed on rank 1: {gathered1}"
    assert sent == f"rank 0: send_object: {why}"
    assert received == f"rank 1: recv_object: rank 0 could not send its object: {sent}"


def test_an_unpicklable_message_that_never_got_its_turn_keeps_its_own_error():
    # Another thread's large message holds the pair's turn past this one's timeout: nothing of
    # it went, so it is a timeout, not "cannot be pickled" (which says the receiver was told),
    # and the receiver's next message is the one sent after it.
    def rank(g):
        if g.rank() == 1:
            time.sleep(2.0)
            return rd.recv_object(0, group=g).shape, rd.recv_object(0, group=g, timeout=10)
        big = threading.Thread(target=lambda: rd.send_object(np.ones(40_000_000), 1, group=g))
        big.start()
        while not g._p2p_turns.get((1, True)) or not g._p2p_turns[(1, True)].locked():
            time.sleep(0.01)
        with pytest.raises(rd.RingTimeoutError):
            rd.send_object(threading.Lock(), 1, group=g, timeout=0.5)
        big.join()
        rd.send_object("next", 1, group=g)

    assert run_ranks(2, rank)[1] == ((40_000_000,), "next")


class _Refuses:
    """Pickles; its unpickling raises (a class whose state the receiving side rejects)."""

    def __reduce__(self):
        return (_refuse, ("not here",))


def _refuse(why):
    raise ValueError(why)


def test_an_object_that_cannot_be_unpickled_names_its_sender():
    # A collective's unpickling failure reaches every rank, in the call, and the group stays
    # usable. Each rank unpickles its result, its own object included (a copy): the sender
    # raises as well.
    def rank(g):
        found = []
        for call in (lambda s: rd.all_gather_object(_Refuses() if g.rank() == 1 else 0, group=s),
                     lambda s: rd.broadcast_object(_Refuses(), root=1, group=s),
                     lambda s: rd.send_object(_Refuses(), 1, group=s) if g.rank() == 0 else rd.recv_object(0, group=s)):
            spare = g.split(0)
            try:
                call(spare)
                found.append(None)
            except ValueError as exc:
                found.append(str(exc))
                assert isinstance(exc.__cause__, ValueError) and str(exc.__cause__) == "not here"
            try:
                rd.barrier(group=spare)
                found.append("usable")
            except rd.RingError as exc:
                found.append(f"{type(exc).__name__}: {exc}")
            spare.close()
        return found

    got = run_ranks(2, rank)
    for r in (0, 1):  # rank 1 unpickles its own copy too
        assert got[r][0] == (f"rank {r}: all_gather_object: the object from rank 1 cannot be unpickled here: "
                             "ValueError: not here"), got
        assert got[r][1] == "usable", got
    for r in (0, 1):  # the root, rank 1, unpickles its own copy too
        assert got[r][2] == (f"rank {r}: broadcast_object: the object from rank 1 cannot be unpickled here: "
                             "ValueError: not here"), got
        assert got[r][3] == "usable", got
    # A message's receiver alone unpickles it; the pair's group stays usable.
    assert got[0][4] is None and got[1][4] == ("rank 1: recv_object: the object from rank 0 cannot be "
                                               "unpickled here: ValueError: not here"), got
    assert got[0][5] == got[1][5] == "usable", got


class _FailsOn:
    """Pickles; unpickles everywhere but on one rank, where unpickling raises `error` (harness ranks
    are threads named by rank): a class the other ranks do not have, say."""

    def __init__(self, rank: int, error: BaseException):
        self.rank, self.error = rank, error

    def __reduce__(self):
        return (_fails_on, (self.rank, self.error))


def _fails_on(rank, error):
    if threading.current_thread().name == f"harness-rank-{rank}":
        raise error
    return "unpickled"


@pytest.mark.parametrize("n, variant", [(3, "default"), (3, "ring"), (9, "default"), (9, "tcp")])
def test_an_object_only_some_ranks_cannot_unpickle_fails_on_every_rank_in_the_call(n, variant):
    # Unpickled on its sender and on all but one rank: each of the others returned its objects
    # while that rank raised. Every rank now raises in the call, naming the rank that could not
    # unpickle and why; the ranks are still in step, and the group goes on.
    bad = n - 1
    refused = _FailsOn(bad, ValueError(f"not on rank {bad}"))

    def rank(g):
        found = []
        for call in (lambda: rd.all_gather_object(refused if g.rank() == 0 else g.rank(), group=g),
                     lambda: rd.broadcast_object(refused, root=1, group=g)):
            try:
                found.append(call())
            except ValueError as exc:
                found.append(str(exc))
        found.append(rd.all_gather_object(g.rank(), group=g))
        return found

    got = run_ranks(n, rank, **VARIANTS[variant])
    why = {"all_gather_object": 0, "broadcast_object": 1}
    for k, (op, sender) in enumerate(why.items()):
        own = f"rank {bad}: {op}: the object from rank {sender} cannot be unpickled here: ValueError: not on rank {bad}"
        assert got[bad][k] == own, got
        assert all(got[r][k] == f"rank {r}: {op} failed on rank {bad}: {own}" for r in range(n) if r != bad), got
    assert all(got[r][2] == list(range(n)) for r in range(n)), got


def test_an_unpickler_that_ends_its_rank_fails_the_call_on_every_rank_at_once():
    # SystemExit (or KeyboardInterrupt) while rank 2 unpickles: it skipped the agreement and told
    # nobody, and the others waited out their timeout in it.
    exits = _FailsOn(2, SystemExit("leaving from rank 2"))

    def rank(g):
        start = time.monotonic()
        try:
            rd.all_gather_object(exits if g.rank() == 0 else g.rank(), group=g, timeout=30)
            return "returned", 0.0
        except BaseException as exc:  # noqa: BLE001 - SystemExit on rank 2
            return f"{type(exc).__name__}: {exc}", time.monotonic() - start

    got = run_ranks(3, rank)
    assert got[2][0] == "SystemExit: leaving from rank 2", got
    for r in (0, 1):
        assert got[r][0].startswith(f"RingError: rank {r}: all_gather_object (agreement step) aborted by rank 2: "
                                    "SystemExit: leaving from rank 2"), got
    assert all(took < 10 for _, took in got), got


@pytest.mark.parametrize("n", [3, 9])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ranks_disagreeing_on_the_root_all_raise_then_the_group_is_broken(variant, n):
    outcomes: list = [None] * n

    def rank(g):
        try:
            rd.broadcast_object("x", root=0 if g.rank() < 2 else 2, group=g)
        except rd.RingError as exc:
            outcomes[g.rank()] = exc
        rd.all_gather_object(1, group=g)

    with pytest.raises(RankFailed) as info:
        run_ranks(n, rank, **VARIANTS[variant])
    assert all(isinstance(o, rd.MismatchError) or "MismatchError" in str(o) for o in outcomes), outcomes
    assert all(isinstance(e, rd.GroupBrokenError) for e in info.value.errors), info.value.errors


def test_recv_object_of_an_array_message_and_recv_of_an_object_raise_mismatch():
    def rank(g):
        if g.rank() == 0:
            rd.send(np.zeros(3), 1, group=g, timeout=10)
        else:
            rd.recv_object(0, group=g, timeout=10)

    with pytest.raises(RankFailed) as info:
        run_ranks(2, rank)
    assert isinstance(info.value.errors[1], rd.MismatchError), info.value.errors
    assert "expected send_object from rank 0" in str(info.value.errors[1])

    def other(g):
        if g.rank() == 0:
            rd.send_object([1, 2], 1, group=g, timeout=10)
        else:
            rd.recv((3,), np.float64, 0, group=g, timeout=10)

    with pytest.raises(RankFailed) as info:
        run_ranks(2, other)
    assert isinstance(info.value.errors[1], rd.MismatchError), info.value.errors
    assert "send_object" in str(info.value.errors[1])


@pytest.mark.parametrize("algo", ["bruck", "ring"])
def test_objects_of_thousands_of_buffers_past_the_mesh_over_tcp(algo):
    # Each object lists 6001 buffer sizes (256 B: 3 bytes each) in its fields; a Bruck step that
    # carries 4 ranks' blocks cannot list them all in one header (64 KiB), so it sends them in
    # several frames.
    def rank(g):
        got = rd.all_gather_object([np.full(64, g.rank() * 10_000 + i, np.int32) for i in range(6000)], group=g)
        return all(np.array_equal(got[q][i], np.full(64, q * 10_000 + i, np.int32))
                   for q in range(g.size()) for i in (0, 1234, 5999))

    assert run_ranks(9, rank, shm=False, algo=(("all_gather_object", algo),)) == [True] * 9


def test_objects_of_more_buffers_than_a_header_lists_travel_in_one_part():
    # 40,000 small arrays: their lengths (a byte each) pass what a header may list (32 KiB); pickled
    # with the buffers inside instead, on every path (a message, a broadcast, a gather).
    count = 40_000

    def rank(g):
        obj = [np.full(2, g.rank() * 7 + i % 5, np.int8) for i in range(count)]
        if g.rank() == 0:
            rd.send_object(obj, 1, group=g)
            got = None
        else:
            got = rd.recv_object(0, group=g)
        b = rd.broadcast_object(obj, root=1, group=g)
        a = rd.all_gather_object(obj, group=g)
        return got, b, a

    want = [np.stack([np.full(2, q * 7 + i % 5, np.int8) for i in range(count)]) for q in range(2)]
    for r, (got, b, a) in enumerate(run_ranks(2, rank)):
        assert (got is None) == (r == 0)
        for have, expect in [(got, want[0]), (b, want[1]), (a[0], want[0]), (a[1], want[1])]:
            if have is not None:
                assert len(have) == count and all(type(x) is np.ndarray and x.shape == (2,) for x in have)
                assert np.array_equal(np.stack(have), expect)


@pytest.mark.parametrize("algo", ["bruck", "ring"])
def test_an_object_kept_keeps_only_its_own_bytes_alive(algo):
    # A Bruck step carries several ranks' blocks; each lands in a buffer of its own, so keeping
    # one rank's array (a view of its block) does not keep the others' alive.
    size = 1 << 20

    def rank(g):
        got = rd.all_gather_object(np.full(size, g.rank(), np.uint8), group=g)
        held = {}
        for q in range(g.size()):
            base = got[q].base
            while base is not None and not isinstance(base, memoryview):
                base = getattr(base, "base", None)
            held[q] = base.obj.nbytes if base is not None and hasattr(base.obj, "nbytes") else 0
        return held

    for r, held in enumerate(run_ranks(9, rank, shm=False, algo=(("all_gather_object", algo),))):
        assert all(nbytes < 2 * size for nbytes in held.values()), (r, held)


@pytest.mark.parametrize("n, shm", [(1, True), (2, True), (3, False), (5, True), (9, True), (9, False)])
def test_gather_object_and_scatter_object_move_each_object_to_its_rank(n, shm):
    # 9 ranks: past the mesh (pairwise exchange over TCP, the segments over shared memory).
    def rank(g):
        r = g.rank()
        out = []
        for root in sorted({0, n - 1}):
            out.append(rd.gather_object({"from": r, "a": np.arange(r + 1)}, root=root, group=g))
            out.append(rd.scatter_object([("to", q, "x" * q) for q in range(n)] if r == root else None, root=root,
                                         group=g))
        big = [np.full(200_000, q, np.int64) for q in range(n)]  # 1.6 MB each: several rounds of a slot
        out.append(rd.scatter_object(big if r == 0 else "ignored", group=g))
        return out

    got = run_ranks(n, rank, shm=shm)
    for r, out in enumerate(got):
        i = 0
        for root in sorted({0, n - 1}):
            gathered, scattered = out[i], out[i + 1]
            i += 2
            if r == root:
                assert [d["from"] for d in gathered] == list(range(n)), gathered
                assert all(np.array_equal(d["a"], np.arange(q + 1)) for q, d in enumerate(gathered))
            else:
                assert gathered is None
            assert scattered == ("to", r, "x" * r)
        assert np.array_equal(out[i], np.full(200_000, r, np.int64))


@pytest.mark.parametrize("n, shm", [(3, True), (9, False)])
def test_a_rooted_object_call_that_cannot_pickle_or_unpickle_fails_on_every_rank_and_the_group_goes_on(n, shm):
    last = n - 1

    def rank(g):
        r = g.rank()
        found = _value_errors((
            lambda: rd.gather_object(threading.Lock() if r == 1 else r, root=0, group=g),  # a sender cannot pickle
            lambda: rd.scatter_object([0, threading.Lock()] + [0] * (n - 2) if r == 0 else None, group=g),
            lambda: rd.gather_object(_FailsOn(0, ValueError("not on the root")), root=0, group=g),
            lambda: rd.scatter_object([_FailsOn(last, ValueError("not here"))] * n if r == 0 else None, group=g)))
        found.append(rd.gather_object(r, root=last, group=g))
        return found

    got = run_ranks(n, rank, shm=shm)
    lock = "the object cannot be pickled: TypeError: cannot pickle '_thread.lock' object"
    for r, found in enumerate(got):
        assert found[0] == (f"rank 1: gather_object: {lock}" if r == 1 else
                            f"rank {r}: gather_object failed on rank 1: rank 1: gather_object: {lock}"), found
        scattered = f"rank 0: scatter_object: {lock.replace('the object', 'the object for rank 1')}"
        assert found[1] == (scattered if r == 0 else f"rank {r}: scatter_object failed on rank 0: {scattered}"), found
        unpickling = ("rank 0: gather_object: the object from rank 0 cannot be unpickled here: ValueError: not on the "
                      "root")
        assert found[2] == (unpickling if r == 0 else f"rank {r}: gather_object failed on rank 0: {unpickling}"), found
        theirs = (f"rank {last}: scatter_object: the object from rank 0 cannot be unpickled here: ValueError: not "
                  "here")
        assert found[3] == (theirs if r == last else f"rank {r}: scatter_object failed on rank {last}: {theirs}"), found
        assert found[4] == (list(range(n)) if r == last else None), found


@pytest.mark.parametrize("n, shm", [(4, True), (9, True), (9, False)])
def test_a_rooted_object_over_its_receivers_cap_fails_on_every_rank_before_anything_moves(n, shm):
    # Every rank's cap and the sizes it sends go to every rank first, so every rank judges every
    # block alike: on one host past 8 ranks the segments' layouts were read unchecked, and the
    # receiver took a 3 MB object over its 1 MB cap.
    last = n - 1

    def rank(g):
        if g.rank() == last:
            g.settings = dataclasses.replace(g.settings, max_object_bytes=1_000_000)
        r = g.rank()
        found = _value_errors((lambda: rd.scatter_object([b"x" * 3_000_000] * n if r == 0 else None, group=g),
                               lambda: rd.gather_object(b"y" * 3_000_000 if r == 0 else b"", root=last, group=g)))
        found.append(rd.gather_object(r, root=last, group=g))
        return found

    got = run_ranks(n, rank, shm=shm)
    for r, found in enumerate(got):
        assert re.fullmatch(rf"rank {r}: scatter_object: rank 0's object for rank {last} pickles to 30000\d\d bytes, "
                            rf"over rank {last}'s RINGDIST_MAX_OBJECT_BYTES=1000000", found[0]), found
        assert re.fullmatch(rf"rank {r}: gather_object: rank 0's object for rank {last} pickles to 30000\d\d bytes, "
                            rf"over rank {last}'s RINGDIST_MAX_OBJECT_BYTES=1000000", found[1]), found
        assert found[2] == (list(range(n)) if r == last else None), found


def test_scatter_object_takes_a_sequence_in_rank_order_not_a_mapping_or_a_set():
    def rank(g):
        try:
            rd.scatter_object({0: "a", 1: "b"} if g.rank() == 0 else None, group=g)
        except (TypeError, rd.RingError) as exc:
            return f"{type(exc).__name__}: {exc}"

    got = run_ranks(2, rank)
    assert got[0] == "TypeError: rank 0: scatter_object: the root passes a sequence of 2 objects, got dict", got
    assert got[1] == ("RingError: rank 1: scatter_object (agreement step) aborted by rank 0: TypeError: rank 0: "
                      "scatter_object: the root passes a sequence of 2 objects, got dict"), got


@pytest.mark.parametrize("shm", [True, False])
def test_arrays_come_back_aligned_after_buffers_of_odd_lengths(shm):
    # Out-of-band buffers landed back to back after the pickle: an array after one of 3 bytes (or
    # after a pickle of any length) started at an odd address, unaligned, where pickle, mpi4py and
    # torch give aligned arrays (numpy's slow loops; C code reading it by pointer).
    objs = [{"b": np.zeros(odd, np.uint8), "x": np.ones(4), "c": np.arange(5, dtype=np.complex128),
             "s": np.arange(6.0)[::2]} for odd in range(1, 8)]

    def rank(g):
        got = []
        for obj in objs:
            got += [rd.broadcast_object(obj, group=g), rd.all_gather_object(obj, group=g)[1]]
            if g.rank() == 0:
                rd.send_object(obj, 1, group=g)
            else:
                got.append(rd.recv_object(0, group=g))
        return got

    for r, got in enumerate(run_ranks(2, rank, shm=shm)):
        for i, o in enumerate(got):
            want = objs[i // (2 if r == 0 else 3)]
            for k, v in o.items():
                assert v.flags.aligned and np.array_equal(v, want[k]) and v.dtype == want[k].dtype, (r, i, k)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


class _RefusesToPickle:
    def __reduce__(self):
        raise _Unprintable()


class _RefusesToUnpickle:
    def __reduce__(self):
        return _raise_unprintable, ()


def _raise_unprintable():
    raise _Unprintable()


@pytest.mark.parametrize("shm", [True, False])
def test_an_error_whose_str_raises_still_fails_every_rank_alike_and_the_group_goes_on(shm):
    # Formatting the pickler's (or unpickler's) error called its __str__, whose own error escaped
    # on that rank alone: the others got "aborted by rank 0" and the group was broken.
    def rank(g):
        out = []
        for obj in (_RefusesToPickle(), _RefusesToUnpickle()):
            with pytest.raises(ValueError) as info:
                rd.broadcast_object(obj if g.rank() == 0 else None, group=g)
            out.append(str(info.value))
        out.append(rd.all_sum(np.ones(1), group=g).tolist())
        return out

    for r, (pickling, unpickling, total) in enumerate(run_ranks(3, rank, shm=shm)):
        assert "the object cannot be pickled: _Unprintable: (its message cannot be shown" in pickling, (r, pickling)
        assert "cannot be unpickled here: _Unprintable: (its message cannot be shown" in unpickling, (r, unpickling)
        assert total == [3.0], r


@pytest.mark.parametrize("shm", [True, False])
def test_an_object_over_a_receivers_cap_in_a_sub_group_names_the_senders_world_rank(shm):
    # World rank 0's cap is 1,000 bytes, which its sub-group's root (world rank 2) cannot know
    # outside a launched job: the receiver refuses the object, naming the sender as a sub-group's
    # rank and its world rank, through shared memory as over TCP.
    def rank(g):
        sub = g.split(color=g.rank() % 2, key=10 - g.rank())
        try:
            rd.broadcast_object(b"x" * 5000, root=0, group=sub)
        except rd.RingError as exc:
            return str(exc)
        return None

    found = run_ranks(4, rank, shm=shm, rank_overrides={0: {"max_object_bytes": 1000}})
    assert "rank 1: broadcast_object: rank 0 (world rank 2) declares a 50" in found[0], found[0]
