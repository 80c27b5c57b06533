"""wait_any and wait_all over Work handles (MPI's Waitany and Waitall), on ranks as threads
over real connections."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ringdist as rd

from harness import run_ranks


def test_wait_any_returns_the_first_handle_to_finish_and_its_result():
    def rank(g):
        r = g.rank()
        if r == 1:
            time.sleep(0.5)
            rd.send(np.array([1.0]), 0, group=g)
        elif r == 2:
            rd.send(np.array([2.0]), 0, group=g)
        if r != 0:
            return None
        works = [rd.recv(1, np.float64, 1, group=g, async_op=True), rd.recv(1, np.float64, 2, group=g, async_op=True)]
        began = time.monotonic()
        i, x = rd.wait_any(works)
        first = (i, float(x[0]), works[0].done())
        j, y = rd.wait_any(works[:1])  # woken by the handle's completion, not a poll
        return first, (j, float(y[0])), time.monotonic() - began

    first, second, took = run_ranks(3, rank)[0]
    assert first == (1, 2.0, False) and second == (0, 1.0), (first, second)
    assert took < 5, took


def test_wait_any_times_out_leaving_every_handle_valid():
    def rank(g):
        if g.rank() == 1:
            time.sleep(0.6)
            rd.send(np.array([7]), 0, group=g)
            return None
        work = rd.recv(1, np.int64, 1, group=g, async_op=True)
        with pytest.raises(rd.RingTimeoutError, match=r"rank 0: wait_any: none of 1 operations finished within "
                                                      r"wait_any\(timeout=0.1\)"):
            rd.wait_any([work], timeout=0.1)
        with pytest.raises(rd.RingTimeoutError, match=r"wait_all: 1 of 1 operations still outstanding"):
            rd.wait_all([work], timeout=0.1)
        return int(rd.wait_any([work])[1][0])

    assert run_ranks(2, rank)[0] == 7


def test_wait_all_returns_every_result_in_order_or_the_first_error_once_all_are_done():
    def rank(g):
        r = g.rank()
        if r != 0:
            time.sleep(0.3 * r)
            rd.send(np.array([r]), 0, group=g)
            return None
        late = rd.recv(1, np.int64, 2, group=g, async_op=True)
        bad = rd.recv((-1,), np.int64, 1, group=g, async_op=True)  # refused when it starts
        early = rd.recv(1, np.int64, 1, group=g, async_op=True)
        with pytest.raises(ValueError, match="dimensions cannot be negative") as failed:
            rd.wait_all([late, bad, early])
        assert failed.value.index == 1  # which handle, as MPI's Waitall says
        assert late.done() and early.done()  # raised only once every handle had finished
        with pytest.raises(ValueError, match="dimensions cannot be negative") as failed:
            rd.wait_any([bad, early])
        assert failed.value.index == 0
        return [int(x[0]) for x in rd.wait_all([late, early])] + rd.wait_all([])

    assert run_ranks(3, rank)[0] == [2, 1]


def test_wait_any_and_wait_all_refuse_what_is_not_a_list_of_handles():
    with pytest.raises(TypeError, match="wait_any: works must be a non-empty sequence"):
        rd.wait_any([])
    with pytest.raises(TypeError, match="wait_all: works must be a sequence of ringdist Work handles"):
        rd.wait_all([None])


def _interrupted():
    raise KeyboardInterrupt  # as Ctrl-C landing while the object is unpickled


class _Interrupting:
    def __reduce__(self):
        return (_interrupted, ())


def test_an_interrupt_in_wait_all_goes_at_once_even_after_a_failed_handle():
    def rank(g):
        if g.rank() == 1:
            rd.send_object(_Interrupting(), 0, group=g)
            return None
        bad = rd.recv((-1,), np.int64, 1, group=g, async_op=True)  # refused when it starts
        obj = rd.recv_object(1, group=g, async_op=True)
        try:
            rd.wait_all([bad, obj])
        except BaseException as exc:  # noqa: BLE001 - which one is the test
            return type(exc).__name__
        return "returned"

    assert run_ranks(2, rank)[0] == "KeyboardInterrupt"
