"""Failures of async send/recv: a send's timeout, a failed handle never waited, and a
send/recv mismatch, each through real launched ranks."""

from __future__ import annotations

import re

import pytest

from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}
SCRIPT = str(SCRIPTS / "async_p2p_faults.py")
STALL = (r"rank 0: send made no progress for 1 s: sending to rank 1 \([\d.]+:\d+, p2p-out link of group "
         r"'world'\) \(33554432 of 33554432 bytes framed\)")


def test_an_async_send_that_times_out_raises_at_wait_and_breaks_the_group():
    res = run_launcher(["-n", "2", SCRIPT, "timeout"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] issued done=False" in res.stdout, res.stdout  # the call returned before the timeout
    rank0 = re.findall(r"^\[0\] raised (\w+): (.*)$", res.stdout, re.M)
    assert [name for name, _ in rank0] == ["RingTimeoutError", "GroupBrokenError"], res.stdout + res.stderr
    assert re.fullmatch(STALL, rank0[0][1]), rank0[0][1]
    assert "cannot run all_sum" in rank0[1][1], rank0[1][1]
    # The receiver, which never posted its recv, learns why at its next operation.
    assert re.search(rf"^\[1\] raised RingTimeoutError: rank 1: all_sum aborted by rank 0: {STALL}$",
                     res.stdout, re.M), res.stdout + res.stderr


def test_a_failed_handle_never_waited_is_logged_when_collected_and_at_exit():
    res = run_launcher(["-n", "2", SCRIPT, "unwaited"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] before drop: 0 logged" in res.stdout, res.stdout
    # Collected: the logger said so at once (the script saw it before going on).
    dropped = re.findall(r"^\[0\] logged when dropped: (.*)$", res.stdout, re.M)
    assert len(dropped) == 1, res.stdout + res.stderr
    assert re.fullmatch(r"rank 0: send on group 'world' failed and was never waited: RingTimeoutError: "
                        + STALL, dropped[0]), dropped[0]
    # Left at exit: the exit hook logs it on stderr, once.
    assert "[0] leaving" in res.stdout, res.stdout
    left = re.findall(r"^\[0\] rank 0: send on group 'world' failed and was never waited: "
                      r"GroupBrokenError: rank 0: group 'world' cannot run send: .*$", res.stderr, re.M)
    assert len(left) == 1, res.stderr
    assert res.stderr.count("was never waited") == 1, res.stderr  # the collected one is not logged again


@pytest.mark.parametrize("variant", ["dtype", "shape"])
def test_an_async_send_recv_mismatch_is_raised_at_wait_on_both_ranks(variant):
    res = run_launcher(["-n", "2", SCRIPT, "mismatch", variant], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = "shape=(1048576,), dtype=float64" if variant == "dtype" else "shape=(2097153,), dtype=float32"
    detail = (rf"rank 1 expected recv\({re.escape(expected)}\) from rank 0 but rank 0 sent "
              r"send\(shape=\(2097152,\), dtype=float32\) \[call #0\] \(group 'world'\)")
    assert re.search(rf"^\[1\] raised MismatchError: {detail}$", res.stdout, re.M), res.stdout + res.stderr
    assert re.search(rf"^\[0\] raised MismatchError: rank 0: send aborted by rank 1: {detail}$",
                     res.stdout, re.M), res.stdout + res.stderr
    assert "ok " not in res.stdout, res.stdout


@pytest.mark.parametrize("mode", ["send", "recv", "mixed", "objects"])
def test_threads_sharing_a_pair_send_and_receive_whole_messages(mode):
    # Two threads of rank 0 send to rank 1 at once (blocking, or one of them with async_op;
    # arrays or objects), or two threads of rank 1 receive from rank 0 at once: each message
    # arrives whole, and each sending thread's messages in its order. Before the pair's
    # direction took turns, frames of two messages interleaved (a message of two threads'
    # values, "bad frame magic", or a stalled send).
    res = run_launcher(["-n", "2", str(SCRIPTS / "p2p_threads.py"), mode, "150", "5000"], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "raised" not in res.stdout, res.stdout + res.stderr
    order = "(in|out of) order" if mode == "recv" else "in order"  # receiving threads interleave their appends
    for sender in (1, 2):
        assert re.search(rf"^\[1\] intact 150 from {sender}: {order} True$", res.stdout, re.M), res.stdout
    assert "[1] torn 0" in res.stdout, res.stdout


def test_a_thread_waiting_for_its_turn_at_a_pair_times_out_naming_why():
    # Rank 0's thread A sends 32 MB that rank 1 takes only after 3 s; thread B's send to rank 1,
    # with a timeout of 0.5 s, waits for its turn and gives up, saying why. A's message arrives.
    res = run_launcher(["-n", "2", str(SCRIPTS / "p2p_threads.py"), "wait", "0", "4000000"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^\[0\] B raised RingTimeoutError: rank 0: send to rank 1 of group 'world': an earlier "
                     r"message to it \(another thread's, or one queued with async_op\) did not end within 0\.5 s "
                     r"\(messages between a pair go one at a time in each direction\)$", res.stdout, re.M), \
        res.stdout + res.stderr
    assert "[1] received from 1" in res.stdout and "[0] A raised" not in res.stdout, res.stdout


@pytest.mark.parametrize("mode", ["queued_send", "queued_recv"])
def test_an_object_message_queued_behind_an_async_one_to_the_same_peer_waits_for_it(mode):
    # queued_send: rank 0 sends 64 MiB with async_op, then send_object to the same peer (queued
    # on the progress thread behind it); queued_recv: rank 0 posts an async recv, then
    # recv_object from the same peer. The object call waits for the earlier message to end,
    # moving it meanwhile (it waited out its timeout, the turn's holder being its own thread).
    res = run_launcher(["-n", "2", str(SCRIPTS / "p2p_threads.py"), mode, "0", "0"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[1] got 8388608.0 {'x': 1}" in res.stdout or "[0] got [0. 1. 2. 3.] hello" in res.stdout, res.stdout
    assert "raised" not in res.stdout, res.stdout


def test_recv_checks_its_shape_before_taking_a_message():
    import numpy as np

    import ringdist as rd
    from harness import run_ranks

    def rank(g):
        if g.rank() == 0:
            rd.send(np.arange(3.0), 1, group=g)
            return None
        found = []
        for shape in ("abc", (-1,), 2.5, (2, None)):
            try:
                rd.recv(shape, np.float64, 0, group=g)
            except (TypeError, ValueError) as exc:
                found.append(f"{type(exc).__name__}: {exc}")
        found.append(rd.recv(3, np.float64, 0, group=g).tolist())  # the message is still there, whole
        return found

    got = run_ranks(2, rank)[1]
    assert got == ["TypeError: rank 1: recv: shape='abc': each dimension must be an integer, got str",
                   "ValueError: rank 1: recv: shape=(-1,): dimensions cannot be negative",
                   "TypeError: rank 1: recv: shape must be an integer or a sequence of integers, got float",
                   "TypeError: rank 1: recv: shape=(2, None): each dimension must be an integer, got NoneType",
                   [0.0, 1.0, 2.0]], got


def test_a_first_message_to_a_rank_that_never_answers_the_handshake_ends_at_the_calls_timeout():
    # The dial of a pair's first message waited out RINGDIST_CONNECT_TIMEOUT (30 s), whatever the
    # call's timeout=; a non-blocking one held the progress thread meanwhile. It is the call's
    # timeout that ends it now, and its error says so (RingTimeoutError, naming that limit).
    res = run_launcher(["-n", "2", str(SCRIPTS / "first_dial_stalled.py")], timeout=45,
                       env={"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "120"})
    assert res.returncode == 0, res.stdout + res.stderr
    for kind in ("blocking", "async"):
        line = next(line for line in res.stdout.splitlines() if line.startswith(f"[0] {kind}: "))
        assert line.startswith(f"[0] {kind}: RingTimeoutError: rank 0: cannot reach rank 1 of group 'world'"), line
        assert "handshake: timed out" in line and "(the call's timeout=2 s sets the limit; a process stopped" in line, \
            line
