"""recv with a shape or dtype of None takes the sender's (what MPI's Probe and Get_count are
for), on ranks as threads over real connections: any array, blocking, async and from any rank."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import MismatchError, RingError

from harness import run_ranks

ARRAYS = [np.arange(5, dtype=np.int16), np.ones((2, 3, 4)), np.float32(3.5), np.zeros((0, 4), np.uint8),
          np.arange(1 << 21, dtype=np.float32),  # 8 MB: many frames
          np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]), np.array([b"ab", b"c"])]


@pytest.mark.parametrize("known", ["neither", "shape", "dtype"])
@pytest.mark.parametrize("async_op", [False, True])
def test_recv_takes_whatever_the_sender_declares(known, async_op):
    def rank(g):
        if g.rank() == 1:
            for x in ARRAYS:
                rd.send(x, 0, group=g)
            return None
        got = []
        for x in ARRAYS:
            shape = np.shape(x) if known == "shape" else None
            dtype = np.asarray(x).dtype if known == "dtype" else None
            y = rd.recv(shape, dtype, 1, group=g, async_op=async_op)
            got.append(y.wait() if async_op else y)
        return got

    for x, y in zip(ARRAYS, run_ranks(2, rank)[0]):
        assert y.shape == np.shape(x) and y.dtype == np.asarray(x).dtype and y.tobytes() == np.asarray(x).tobytes()


def test_recv_any_of_any_shape_says_who_sent_what():
    def rank(g):
        r = g.rank()
        if r != 0:
            rd.send(np.arange(r * 3, dtype=np.int64).reshape(r, 3), 0, group=g)
            return None
        return sorted((src, x.shape) for src, x in (rd.recv_any(None, np.int64, group=g) for _ in range(3)))

    assert run_ranks(4, rank)[0] == [(1, (1, 3)), (2, (2, 3)), (3, (3, 3))]


@pytest.mark.parametrize("shape, dtype, sent", [(None, np.float32, "shape=(4,), dtype=float64"),
                                                ((5,), None, "shape=(4,), dtype=float64"),
                                                (None, None, "send_object")])
def test_what_the_receive_fixes_must_match_on_both_ranks(shape, dtype, sent):
    def rank(g):
        try:
            if g.rank() == 1:
                if sent == "send_object":
                    rd.send_object([1], 0, group=g)
                else:
                    rd.send(np.arange(4.0), 0, group=g)
                rd.barrier(group=g)
            else:
                rd.recv(shape, dtype, 1, group=g)
        except RingError as exc:
            return type(exc), str(exc)
        return None

    outcomes = run_ranks(2, rank)
    want = (f"shape={'any' if shape is None else shape}, "
            f"dtype={'any' if dtype is None else np.dtype(dtype).name}")
    assert outcomes[0][0] is MismatchError and f"rank 0 expected recv({want}) from rank 1 but rank 1 sent" in \
        outcomes[0][1] and sent in outcomes[0][1], outcomes
    assert outcomes[1][0] is MismatchError and "aborted by rank 0" in outcomes[1][1], outcomes


def test_a_subarray_dtype_with_no_shape_fixes_the_trailing_dims():
    def rank(g):
        if g.rank() == 1:
            rd.send(np.zeros(2, np.int32), 0, group=g)  # one element of the subarray dtype
            rd.send(np.zeros((3, 2), np.int32), 0, group=g)
            rd.send(np.zeros((3, 5), np.int32), 0, group=g)
            return None
        assert rd.recv(None, np.dtype(("i4", (2,))), 1, group=g).shape == (2,)
        ok = rd.recv(None, np.dtype(("i4", (2,))), 1, group=g)
        with pytest.raises(MismatchError, match=r"expected recv\(shape=\(any, 2\), dtype=int32\)"):
            rd.recv(None, np.dtype(("i4", (2,))), 1, group=g)
        return ok.shape

    assert run_ranks(2, rank)[0] == (3, 2)  # (rank 1's small sends returned before the mismatch)


@pytest.mark.parametrize("dtype, why", [("nope", r"dtype='nope' is not a numpy dtype \(data type 'nope' not understood"),
                                        ("V0", "dtype \\|V0 has no fixed item size"),
                                        (object, "object dtypes are not supported")])
def test_a_receive_of_a_dtype_no_message_can_have_is_refused_at_once_as_a_send_of_it_is(dtype, why):
    # Refused before it waits, on this rank alone, with nothing sent or taken: a receive of it
    # waited for its timeout, or broke the group when a message came.
    def rank(g: rd.Group) -> list[str]:
        if g.rank() == 0:
            rd.send(np.arange(3.0), 1, group=g)
            return []
        began, errors = time.monotonic(), []
        for call in (lambda: rd.recv((3,), dtype, 0, group=g, timeout=20),
                     lambda: rd.recv_any((3,), dtype, group=g, timeout=20),
                     lambda: rd.recv((3,), dtype, 0, group=g, async_op=True, timeout=20).wait(),
                     lambda: rd.sendrecv(np.zeros(1), None, 0, dtype=dtype, group=g, timeout=20),
                     lambda: rd.recv((3,), dtype, None, group=g)):
            with pytest.raises(TypeError, match=why) as exc:
                call()
            errors.append(str(exc.value))
        assert time.monotonic() - began < 5
        assert rd.recv((3,), np.float64, 0, group=g).tolist() == [0.0, 1.0, 2.0]  # the message is still there
        return errors

    got = run_ranks(2, rank)[1]
    assert all(e.startswith("rank 1: ") for e in got), got


def test_recv_like_of_none_says_none_is_no_array():
    def rank(g: rd.Group) -> str:
        with pytest.raises(TypeError) as exc:
            rd.recv_like(None, 1 - g.rank(), group=g)
        return str(exc.value)

    assert run_ranks(2, rank)[0] == "rank 0: recv_like: None is not an array"


def test_a_bad_group_or_timeout_names_the_call_and_the_rank():
    def rank(g: rd.Group) -> list[str]:
        got = []
        for call in (lambda: rd.send(np.ones(1), 1 - g.rank(), group=g, timeout=-1),
                     lambda: rd.recv_object(1 - g.rank(), group=g, timeout="5"),
                     lambda: rd.recv((1,), np.float64, 1 - g.rank(), group="world"),
                     lambda: rd.all_sum(np.ones(1), group=3, async_op=True)):
            with pytest.raises((TypeError, ValueError)) as exc:
                call()
            got.append(str(exc.value))
        return got

    got = run_ranks(2, rank)[1]
    assert got[0] == "rank 1: send: timeout must be a positive number of seconds (inf: no limit), got -1"
    assert got[1] == "rank 1: recv_object: timeout must be a positive number of seconds (inf: no limit), got '5'"
    # (the rank is the process's world group's, which this harness's ranks share, if an earlier test made one:
    # a launched job's says "rank 1: recv: ...")
    assert re.fullmatch(r"(rank \d+: )?recv: group must be a ringdist Group or None, got str", got[2]), got
    assert re.fullmatch(r"(rank \d+: )?all_sum: group must be a ringdist Group or None, got int", got[3]), got
