"""A blocking call queued behind its group's non-blocking operations, interrupted in its wait
(an error a signal handler raises, as Ctrl-C's KeyboardInterrupt is), ends as the same call
run inline would: a message not begun is dropped, as if never called (the next receive gets
the message it would have had), and a collective breaks the group on every rank. Launched
ranks, as the interruption comes by a signal to the process (`scripts/interrupted_calls.py`)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import ringdist as rd
from harness import run_ranks
from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


def _run(tmp_path, mode: str, shm: str = "1") -> str:
    tmp_path.mkdir(exist_ok=True)
    res = run_launcher(["-n", "3", str(SCRIPTS / "interrupted_calls.py"), mode, str(tmp_path)], timeout=90,
                       env={**FAST, "RINGDIST_SHM": shm})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert sorted(line for line in res.stdout.splitlines() if line.endswith("] end")) == \
        ["[0] end", "[1] end", "[2] end"], out
    return out


@pytest.mark.parametrize("mode", ["recv", "recv_any", "recv_elsewhere"])
def test_an_interrupted_queued_receive_takes_no_message(tmp_path, mode):
    # Rank 1's receive waits behind an irecv of another tag; interrupted before its message
    # comes, it is dropped: the retry gets the first message, not the second. `_elsewhere`:
    # the signal is given to another thread of the rank (as the kernel sometimes does): the
    # wait on the main thread ran on until the receive timed out, the handler only then.
    out = _run(tmp_path, mode)
    for line in ("[1] first: interrupted", "[1] retry: got [1.0, 1.0]", "[1] tagged: got [7.0, 7.0]",
                 "[0] barrier: got None", "[1] barrier: got None", "[2] barrier: got None"):
        assert line in out, (line, out)


def test_an_interrupted_receive_on_a_connection_already_used(tmp_path):
    # Queued (behind an irecv from another rank), with none of its message read, it ends alone
    # (it broke the group): the progress thread looks between reads. Inline the interruption
    # may come between a read and its bookkeeping, so the group breaks there, on every rank.
    out = _run(tmp_path, "recv_open_queued")
    for line in ("[1] first: got [1.0, 1.0]", "[1] second: interrupted", "[1] retry: got [2.0, 2.0]",
                 "[1] other: got [3.0, 3.0]", "[0] send: got None",
                 "[0] barrier: got None", "[1] barrier: got None", "[2] barrier: got None"):
        assert line in out, (line, out)
    for how in ("recv_open", "recv_open_elsewhere"):  # (the signal given to another thread: the poll looks
        out = _run(tmp_path / how, how)              # every 0.1 s on the main thread, or it timed out first)
        for line in ("[1] second: interrupted", "[1] retry: GroupBrokenError: rank 1: group 'world' cannot run recv",
                     "[0] send: RingError: rank 0: send aborted by rank 1: Alarm: alarm",
                     "[2] barrier: RingError: rank 2: barrier aborted by rank 1: Alarm: alarm"):
            assert line in out, (how, line, out)


@pytest.mark.parametrize("queued", [False, True])
def test_a_receive_timing_out_before_its_message_ends_alone(queued):
    # A receive with `timeout=` in a loop: one that times out with nothing of its message read
    # leaves the group usable and misses nothing, on a connection already used or not, inline
    # or queued on the progress thread (behind an irecv from another rank) (it broke the group
    # once the connection had come).
    def rank(g: rd.Group) -> tuple[list, int]:
        got, timeouts = [], 0
        if g.rank() == 0:
            for k in (1, 2, 3):
                time.sleep(0.6)
                rd.send(np.full(2, k), 1, group=g)
        elif g.rank() == 2:
            time.sleep(2.5)
            rd.send(np.full(2, 7), 1, group=g)
        else:
            other = rd.recv((2,), np.int64, 2, group=g, async_op=True) if queued else None
            while len(got) < 3 and timeouts < 40:
                try:
                    got.append(rd.recv((2,), np.int64, 0, group=g, timeout=0.25).tolist())
                except rd.RingTimeoutError:
                    timeouts += 1
            got.append(other.wait(10).tolist() if queued else rd.recv((2,), np.int64, 2, group=g).tolist())
        rd.barrier(group=g)
        return got, timeouts

    got, timeouts = run_ranks(3, rank)[1]
    assert got == [[1, 1], [2, 2], [3, 3], [7, 7]], got
    assert timeouts >= 3, timeouts  # (each message came after at least one timed out)


def test_an_interrupted_send_waiting_for_its_turn_sends_nothing(tmp_path):
    # Rank 0's send waits for its pair's turn behind a 64 MiB isend the receiver takes late.
    out = _run(tmp_path, "send")
    for line in ("[0] first: interrupted", "[0] second: got None", "[0] big: got None",
                 "[1] big: got [1.0, 1.0]", "[1] next: got [2.0, 2.0]", "[2] barrier: got None"):
        assert line in out, (line, out)


@pytest.mark.parametrize("shm", ["1", "0"])
@pytest.mark.parametrize("mode", ["collective_queued", "collective_running", "collective_running_slow"])
def test_an_interrupted_queued_collective_breaks_the_group_on_every_rank(tmp_path, mode, shm):
    # Queued behind an all_sum waiting for late peers, or running at once behind an irecv:
    # rank 0's interrupted all_sum fails that call on its peers (naming the interruption),
    # and the group refuses rank 0's retry. An earlier all_sum that ran keeps its result.
    # Running, rank 0 gave its part before the interruption: its peers, coming once it has
    # raised, need nothing more of it, and fail by the ABORT its runner sent before rank 0's
    # call raised (`_slow`: that runner acts 0.3 s late; the peers then returned the sum).
    out = _run(tmp_path, mode, shm)
    assert "[0] second: interrupted" in out, out
    assert "[0] retry: GroupBrokenError: rank 0: group 'world' cannot run all_sum: an earlier operation on it " \
           "failed (all_sum: Alarm: alarm)" in out, out
    if mode == "collective_queued":
        assert "[0] earlier: got [6.0, 6.0]" in out, out
    for r in (1, 2):
        if mode == "collective_queued":
            assert f"[{r}] x1: got [6.0, 6.0]" in out, out
        assert f"[{r}] x10: RingError: rank {r}: all_sum aborted by rank 0: Alarm: alarm" in out, out
        assert f"[{r}] x100: GroupBrokenError" in out, out


def test_waits_split_by_a_raising_signal_handler_lose_nothing_and_raise_nothing_else():
    # threading's Event.wait, split by an exception a signal handler raised, released its lock
    # twice (RuntimeError: release unlocked lock, in place of the interruption) or left it held
    # (the completion then waited forever): within 1,500 waits split every 0.3 ms, every run. A
    # handler that waited on a handle while its thread held the handles' lock waited on itself.
    res = run_launcher(["-n", "2", str(SCRIPTS / "signal_waits.py"), "200"], timeout=120, env=FAST)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    found = re.search(r"^\[1\] ticks (\d+) other (\d+) ok (\w+)$", res.stdout, re.M)
    assert found and int(found[1]) > 0 and found.groups()[1:] == ("0", "True"), out
