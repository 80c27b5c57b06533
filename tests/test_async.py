"""Non-blocking operations (async_op=True): results, ordering, deadlock freedom and failures,
through real launched ranks (the progress thread is one per process)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import numpy as np

import ringdist as rd
from harness import run_ranks
from helpers import SCRIPTS, LineReader, kill_tree, run_launcher, start_launcher, wait_until_gone

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_every_operation_async_ordered_and_deadlock_free(n):
    # Every collective and send/recv/recv_like with async_op=True against numpy, waited in
    # reverse; 50 outstanding with a blocking call behind them; a 4 MiB isend/irecv ring shift
    # on every rank at once; an isend then all_sum while the receiver runs a blocking recv
    # first; wait(timeout) on an outstanding recv; close with a recv outstanding; and no
    # thread in a process that made only blocking calls.
    res = run_launcher(["-n", str(n), str(SCRIPTS / "async_matrix.py")], timeout=150, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    for line in ("no thread when unused", "collectives ok", "many ok", "async ok"):
        ranks = sorted(int(r) for r in re.findall(rf"^\[(\d+)\] {line} rank=", res.stdout, re.M))
        assert ranks == list(range(n)), (line, res.stdout + res.stderr)
    if n > 1:
        assert len(re.findall(r"^\[\d+\] p2p ok", res.stdout, re.M)) == n
        assert len(re.findall(r"^\[\d+\] wait timeout ok", res.stdout, re.M)) == n


def _raised(text: str) -> dict[int, list[tuple[str, float, str]]]:
    found: dict[int, list[tuple[str, float, str]]] = {}
    for rank, name, t, message in re.findall(r"^\[(\d+)\] raised (\w+) at ([\d.]+): (.*)$", text, re.M):
        found.setdefault(int(rank), []).append((name, float(t), message))
    return found


def test_a_mismatch_is_raised_at_wait_on_every_rank_and_breaks_the_group():
    res = run_launcher(["-n", "3", str(SCRIPTS / "async_faults.py"), "mismatch"], timeout=60, env=FAST)
    assert res.returncode == 3, res.stdout + res.stderr
    raised = _raised(res.stdout)
    assert sorted(raised) == [0, 1, 2], res.stdout
    for rank, errors in raised.items():
        assert [name for name, _, _ in errors] == ["MismatchError", "GroupBrokenError"], errors
        assert "all_gather(shape=(5,), dtype=float32)" in errors[0][2]
        assert "cannot run all_sum" in errors[1][2]


def test_kill_9_during_outstanding_operations_reaches_every_survivor_at_wait():
    proc = start_launcher(["-n", "4", "--grace", "10", str(SCRIPTS / "async_faults.py"), "kill"],
                          env={"RINGDIST_TIMEOUT": "30"})
    try:
        out = LineReader(proc.stdout)
        found = out.wait_for(r"^\[(\d+)\] ready pid=(\d+)$", count=4, timeout=60)
        pids = {int(m.group(1)): int(m.group(2)) for m in found}
        time.sleep(0.2)
        os.kill(pids[2], signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=30)
        text = out.rest()
        err = proc.stderr.read()
    finally:
        kill_tree(proc)
    raised = _raised(text)
    assert sorted(raised) == [0, 1, 3], text + err
    for rank, errors in raised.items():
        # The first wait that raises, and each later one: the op's own detection of the loss,
        # an ABORT passed on, or GroupBrokenError naming the failure that broke the group. A
        # message to or from a survivor that has already raised and left may fail on that: its
        # departure (named with rank 2's, which came first) or its closed connection.
        for name, t, message in errors:
            assert name in ("PeerLostError", "RingTimeoutError", "GroupBrokenError"), errors
            assert "rank 2" in message or re.search(r"lost rank [013] \(.*p2p-(in|out) link", message), message
        assert errors[0][1] - killed_at < 5.0, (rank, errors[0][1] - killed_at)
    assert "rank 2" in err and "SIGKILL" in err
    assert not wait_until_gone(list(pids.values()), timeout=10)


def test_exit_with_operations_outstanding_ends_them_and_logs():
    start = time.time()
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_faults.py"), "exit"], timeout=60, env=FAST)
    ended = time.time()
    # The exit status is the script's own; each outstanding operation is logged on stderr.
    assert res.returncode == 0, res.stdout + res.stderr
    left = [float(t) for t in re.findall(r"^\[\d\] leaving at ([\d.]+)$", res.stdout, re.M)]
    assert len(left) == 2 and min(left) >= start
    assert ended - max(left) < 4.0, ended - max(left)  # not the 5 s a hung close would wait
    # Each outstanding operation ends as its rank exits; the one whose peer left a moment before it
    # may end first on that peer's loss (the group then broken for the operations behind it).
    for rank in (0, 1):
        assert re.search(rf"^\[{rank}\] rank {rank}: recv on group 'world' failed and was never waited: "
                         rf"(RingError: rank {rank}: recv on group 'world': closed with the operation "
                         rf"outstanding \(the process is exiting\)"
                         rf"|(PeerLostError|GroupBrokenError): rank {rank}: .*lost rank {1 - rank} .*connection closed by "
                         rf"peer.*)$", res.stdout + res.stderr, re.M), res.stderr
    assert re.search(r"^\[0\] rank 0: all_gather on group 'world' failed and was never waited: ",
                     res.stdout + res.stderr, re.M), res.stderr


def test_timeouts_count_from_the_start_of_progress_not_the_issue():
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_faults.py"), "late"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    late = re.search(r"^\[0\] late ok after ([\d.]+)s$", res.stdout, re.M)
    assert late and float(late.group(1)) >= 2.5, res.stdout  # longer than the 2 s timeouts since issue


def test_a_forked_child_has_no_progress_thread_and_refuses():
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_faults.py"), "fork"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    for rank in (0, 1):
        child = re.findall(rf"^\[{rank}\] child: (.*)$", res.stdout, re.M)
        assert len(child) == 3, res.stdout
        assert re.fullmatch(r"RingError: recv on group 'world' was issued by process \d+; "
                            r"a forked child cannot wait for it", child[0]), child
        for line in child[1:]:
            assert re.fullmatch(rf"RingError: rank {rank}: all_gather on group 'world': this group belongs to "
                                rf"process \d+; a forked child \(process \d+\) cannot use it", line), line
        assert f"[{rank}] fork ok" in res.stdout


def test_a_wake_up_landing_while_the_thread_takes_the_last_one_is_not_lost(monkeypatch):
    # The progress thread sleeps in poll until a byte comes down its pipe; `_wake` writes one
    # only when none is there unread. A `_wake` from the calling thread may land while the
    # progress thread is in `_on_wake`, just before its read: here the read itself lets it land.
    # Afterwards the pipe and the flag must agree, so that the next `_wake` writes again;
    # otherwise a queued operation (or exit's request to end them) would never wake the thread.
    import select
    import types

    from ringdist import work

    r, w = os.pipe()
    monkeypatch.setattr(work, "_wake_r", r)
    monkeypatch.setattr(work, "_wake_w", w)
    monkeypatch.setattr(work, "_woken", False)
    real_read = os.read

    def read_after_a_wake(fd: int, n: int) -> bytes:
        work._wake()  # the other thread's wake-up, landing now
        return real_read(fd, n)

    try:
        work._wake()  # a job was queued: one byte
        monkeypatch.setattr(work, "os", types.SimpleNamespace(read=read_after_a_wake, write=os.write))
        work._on_wake(types.SimpleNamespace(running=None))
        monkeypatch.setattr(work, "os", os)
        work._wake()  # the next job: the thread must be woken for it
        assert select.select([r], [], [], 0)[0] == [r], "a wake-up was lost: the thread would sleep"
    finally:
        os.close(r)
        os.close(w)


def test_exit_landing_between_the_threads_looks_still_ends_the_started_jobs(monkeypatch):
    # Exit sets `_stopping` and `jobs.closing` under the lock, and the thread looks at
    # `jobs.closing` before it takes the lock to read `_stopping`. Exit may land between the
    # two looks: the thread must still end the started jobs (a recv waiting for its sender)
    # before it leaves, rather than leave them for exit to wait out CLOSE_WAIT.
    import types
    from collections import deque

    from ringdist import jobs, work
    from ringdist.errors import RingError
    from ringdist.handle import Work
    from ringdist.lanes import Lanes

    class Group:  # what the thread reads of a group: its id and this rank
        gid = "world"

        def rank(self) -> int:
            return 1

    group = Group()
    plan = types.SimpleNamespace(op="recv", peer=0, outgoing=False, turn=None, sources=None, release=lambda: None)
    job = types.SimpleNamespace(work=Work("recv", group), g=group, plan=plan, finished=False,
                                result=None, error=None, asker=None)

    class SetByExitAfterTheLook(set):
        looks = 0

        def __bool__(self) -> bool:  # the thread's first look comes just before exit's change
            SetByExitAfterTheLook.looks += 1
            return SetByExitAfterTheLook.looks > 1 and super().__bool__()

    r, w = os.pipe()
    try:
        flows = Lanes(r, lambda flows: None)
        flows.lanes[(group, 0, False)] = deque([job])
        monkeypatch.setattr(jobs, "pending", {group: [job]})
        monkeypatch.setattr(jobs, "queue", deque())
        monkeypatch.setattr(jobs, "closing", SetByExitAfterTheLook({group}))
        monkeypatch.setattr(work, "_stopping", True)
        work._loop(flows)
        assert job.work.done() and not flows.lanes
        with pytest.raises(RingError, match=r"rank 1: recv on group 'world': closed with the operation "
                                            r"outstanding \(the process is exiting\)"):
            job.work.wait(timeout=0)
    finally:
        os.close(r)
        os.close(w)


def test_many_preposted_recvs_each_read_ahead_of_its_turn_all_arrive_in_order():
    # Every head of the lane after the first completes as it opens (its bytes were read with the
    # previous message's): 3,000 such heads once took the progress thread past Python's recursion limit.
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_lanes.py"), "preposted", "3000"], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(re.findall(r"^\[(\d)\] preposted ok$", res.stdout, re.M)) == ["0", "1"], res.stdout


@pytest.mark.parametrize("shm", ["1", "0"])
def test_async_work_beside_blocking_collectives_on_another_group(shm):
    # Async collectives and a ring shift on the world while this thread runs blocking collectives
    # on another group of the same ranks (with one thread for every async operation, a send
    # unblocked inside a collective's wait once stalled until its timeout, shared memory on).
    res = run_launcher(["-n", "4", str(SCRIPTS / "async_lanes.py"), "beside"], timeout=150,
                       env={**FAST, "RINGDIST_SHM": shm})
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d\] beside ok$", res.stdout, re.M)) == 4, res.stdout


@pytest.mark.parametrize("mode", ["two_groups", "one_group"])
def test_queued_object_messages_of_two_threads_do_not_wait_for_each_other(mode):
    # Rank 0's threads each have an object message queued behind a non-blocking barrier; T1's
    # recv_object is answered only after T2's send_object arrived. Run whole on the progress
    # thread, T1's recv held T2's send behind it until RINGDIST_TIMEOUT.
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_objects.py"), mode], timeout=90,
                       env={**FAST, "RINGDIST_TIMEOUT": "15"})
    assert res.returncode == 0, res.stdout + res.stderr
    for line in ("T2 sent rank=0", "T1 got from rank 1 rank=0", "got from T2 rank=1", "done rank=0", "done rank=1"):
        assert re.search(rf"^\[\d\] {line}$", res.stdout, re.M), (line, res.stdout + res.stderr)


def test_queued_object_messages_that_fail_raise_on_both_ends_and_name_their_call():
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_objects.py"), "failures"], timeout=90, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    sent = ("rank 0: send_object: the object cannot be pickled: TypeError: cannot pickle '_thread.lock' "
            "object")
    assert f"[0] send raised {sent} rank=0\n" in res.stdout, res.stdout
    assert f"[1] recv raised rank 1: recv_object: rank 0 could not send its object: {sent} rank=1\n" in res.stdout
    assert "[1] then got next rank=1\n" in res.stdout, res.stdout
    assert re.search(r"^\[1\] timed out rank 1: recv_object in group 'world/0:0': waiting for rank 0 to send: it "
                     r"sent this rank no message on this group within [\d.]+ s \(is it in another call, or waiting to receive "
                     r"too\? `timeout=` or RINGDIST_TIMEOUT sets how long a receive waits\) rank=1$", res.stdout,
                     re.M), res.stdout
    assert "[0] done rank=0\n" in res.stdout and "[1] done rank=1\n" in res.stdout, res.stdout


@pytest.mark.parametrize("n", [2, 3])
def test_object_messages_with_async_op(n):
    # mpi4py's isend/irecv of objects: pickled at the call, unpickled by the first wait (two
    # threads waiting get one object); a failure to pickle or unpickle is raised at the wait.
    res = run_launcher(["-n", str(n), str(SCRIPTS / "async_objects.py"), "nonblocking"], timeout=90, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert sorted(re.findall(r"^\[(\d)\] ring ok", out, re.M)) == [str(r) for r in range(n)], out
    assert sorted(re.findall(r"^\[(\d)\] done", out, re.M)) == [str(r) for r in range(n)], out
    sent = "rank 0: send_object: the object cannot be pickled: TypeError: cannot pickle '_thread.lock' object"
    for line in ("[1] two waiters ok rank=1",
                 f"[0] unpicklable send raised {sent} rank=0",
                 f"[1] unpicklable recv raised rank 1: recv_object: rank 0 could not send its object: {sent} (cause None) rank=1",
                 "[0] refused sent None rank=0",
                 "[1] refused recv raised rank 1: recv_object: the object from rank 0 cannot be unpickled here: "
                 "ValueError: not here (cause ValueError('not here')) rank=1",
                 "[0] after sent None rank=0", "[1] after got after rank=1"):
        assert line + "\n" in out, (line, out)


def test_wait_refuses_a_bad_timeout_whether_or_not_the_operation_has_finished():
    res = run_launcher(["-n", "1", str(SCRIPTS / "async_lanes.py"), "wait_args"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = re.findall(r"^\[0\] finished=(\w+) timeout=(.*): (\w+)$", res.stdout, re.M)
    assert len(lines) == 6 and all(outcome == "ValueError" for _, _, outcome in lines), res.stdout


@pytest.mark.parametrize("shm", ["1", "0"])
def test_async_collectives_on_different_groups_may_be_issued_in_any_order(shm):
    # As MPI allows for non-blocking collectives on different communicators: each group's run
    # on a thread of their own (with one progress thread for every group, both waited out their timeout).
    res = run_launcher(["-n", "3", str(SCRIPTS / "async_lanes.py"), "cross"], timeout=120,
                       env={**FAST, "RINGDIST_TIMEOUT": "8", "RINGDIST_SHM": shm})
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d\] cross ok$", res.stdout, re.M)) == 3, res.stdout


def test_a_message_failing_while_its_groups_collective_ends_without_a_wait_is_told_to_the_peers():
    # Rank 0's irecv fails (what comes does not fit) while its all_gather_object, past its
    # last wait, still works on the runner: nothing raises into it, so it tells the peers as
    # it ends (they waited 20 s before).
    res = run_launcher(["-n", "3", str(SCRIPTS / "async_lanes.py"), "told"], timeout=120, env=FAST)
    raised = dict(re.findall(r"^\[(\d)\] all_sum raised (.*)$", res.stdout, re.M))
    assert sorted(raised) == ["0", "1", "2"], res.stdout + res.stderr
    assert raised["0"].startswith("GroupBrokenError"), raised
    for rank in ("1", "2"):
        after = float(re.match(r"\w+ after ([\d.]+)s", raised[rank]).group(1))
        assert "aborted by rank 0: rank 0 expected recv(shape=(1,), dtype=float64) from rank 2" in raised[rank], raised
        assert after < 10, raised


def test_a_message_failing_before_its_groups_queued_collective_reaches_the_group_is_told_to_the_peers():
    # Rank 1's irecv fails (what comes does not fit) while its async all_gather_object is
    # still pickling: the call is then refused (the group is broken) before it touches a
    # connection, and nobody told the peers, which waited out their 20 s in the call.
    res = run_launcher(["-n", "3", str(SCRIPTS / "async_lanes.py"), "refused"], timeout=120, env=FAST)
    assert "[1] recv raised MismatchError" in res.stdout and "[1] all_gather_object raised GroupBrokenError" \
        in res.stdout, res.stdout + res.stderr
    for rank in ("0", "2"):
        heard = re.search(rf"^\[{rank}\] all_gather_object raised \w+ after ([\d.]+)s: (.*)$", res.stdout, re.M)
        assert heard and "aborted by rank 1: rank 1 expected recv(shape=(1,), dtype=float64)" in heard.group(2), \
            res.stdout + res.stderr
        assert float(heard.group(1)) < 10, res.stdout


def test_a_closed_groups_runner_ends_with_it():
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_lanes.py"), "groups"], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    peaks = [int(p) for p in re.findall(r"^\[\d\] runner threads at most (\d+)$", res.stdout, re.M)]
    assert len(peaks) == 2 and max(peaks) <= 2, res.stdout  # was one per group closed in the last second


def test_a_runner_that_cannot_start_leaves_nothing_pending():
    res = run_launcher(["-n", "1", str(SCRIPTS / "async_lanes.py"), "no_runner"], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] first call raised Too many open files; pending: 0" in res.stdout, res.stdout
    assert "[0] second call: [1.0, 1.0]" in res.stdout, res.stdout
    assert "still outstanding at exit" not in res.stdout + res.stderr


def test_a_failed_progress_thread_breaks_the_group_on_every_rank():
    res = run_launcher(["-n", "2", str(SCRIPTS / "async_lanes.py"), "thread_fails"], timeout=60, env=FAST)
    assert "[0] send raised rank 0: send on group 'world': the progress thread failed: RuntimeError: injected" \
        in res.stdout, res.stdout + res.stderr
    heard = re.search(r"^\[1\] all_sum raised after ([\d.]+)s: (.*)$", res.stdout, re.M)
    assert heard and "aborted by rank 0" in heard.group(2) and "the progress thread failed" in heard.group(2), res.stdout
    assert float(heard.group(1)) < 4.5, res.stdout  # at once, long before rank 0 leaves (6 s)


def test_a_recv_waiting_for_its_connection_gives_up_when_its_group_breaks():
    # Rank 1 never sends. While rank 0's recv waits for the connection, another thread of rank 0
    # makes a collective call with a bad argument, which breaks the group: the recv raised only
    # at its timeout, naming no cause.
    import threading as _threading

    def rank(g: rd.Group) -> str:
        if g.rank() == 0:
            def bad_call() -> None:
                time.sleep(0.3)
                try:
                    rd.all_sum(np.array(["not a number"]), group=g)
                except TypeError:
                    pass
            t = _threading.Thread(target=bad_call)
            t.start()
            try:
                rd.recv((3,), np.float64, 1, group=g, timeout=60)
                outcome = "received"
            except rd.RingError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            t.join()
            return outcome
        try:
            rd.all_sum(np.ones(2), group=g, timeout=60)
        except rd.RingError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "returned"

    got = run_ranks(2, rank, timeout=90)
    assert got[0].startswith("GroupBrokenError: rank 0: group 'world' cannot run recv") and "not numeric" in got[0], got
    assert "aborted by rank 0" in got[1] and "not numeric" in got[1], got


def test_a_send_that_fails_while_an_async_collective_runs_completes_with_its_error():
    """Rank 0 has an async all_sum running (rank 1 never joins it) and an async send that rank 1
    receives with another shape: the send fails (rank 1's ABORT on its connection) while the
    all_sum runs, is handed to the group's runner, and must complete with its error when the
    all_sum ends (its handle stayed outstanding, past any timeout, in 5 of 6 runs)."""
    def rank(g):
        if g.rank() == 0:
            summed = rd.all_sum(np.ones(10), group=g, async_op=True)
            sent = rd.send(np.ones(1_250_000), 1, group=g, async_op=True)
            out = []
            for w in (summed, sent):
                try:
                    w.wait(timeout=10)
                    out.append("returned")
                except rd.RingTimeoutError as exc:
                    out.append(f"outstanding: {exc}")
                except rd.RingError as exc:
                    out.append(type(exc).__name__)
            return out
        time.sleep(0.3)
        with pytest.raises(rd.MismatchError):
            rd.recv((5,), np.float64, 0, group=g)
        return None

    for _ in range(3):  # (the send's failure must land while the all_sum runs: most runs)
        summed, sent = run_ranks(2, rank, shm=False)[0]
        assert not summed.startswith(("returned", "outstanding")), summed
        assert not sent.startswith(("returned", "outstanding")), sent


def test_a_completed_async_collective_frees_its_input_and_result_at_once():
    # The group's runner waits up to runners.IDLE (1 s) for its next job; the job it last ran
    # (its call, whose closure holds the input, and its result) must not stay alive through that
    # wait: once the caller drops the input, the result and the handle, both are freed.
    import weakref

    def rank(g):
        x = np.ones(1 << 16)
        w = rd.all_sum(x, group=g, async_op=True)
        y = w.wait()
        assert np.array_equal(y, np.full(1 << 16, 2.0))
        refs = weakref.ref(x), weakref.ref(y)
        del x, y, w
        deadline = time.monotonic() + 0.2
        while any(ref() is not None for ref in refs) and time.monotonic() < deadline:
            time.sleep(0.005)
        return [ref() is None for ref in refs]

    assert run_ranks(2, rank) == [[True, True], [True, True]]
