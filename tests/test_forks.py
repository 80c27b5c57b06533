"""Forked children neither defeat failure detection nor outlive the job.

A rank's forked child holds a copy of the rank's sockets unless ringdist closes them in the
child: a rank killed while its child lives would then go unnoticed by its peers until
RINGDIST_TIMEOUT. And a launcher killed with kill -9 must take its ranks' children with it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from helpers import (SCRIPTS, LineReader, descendants, kill_tree, pid_alive, run_launcher, start_launcher,
                     wait_until_gone)
from test_schedulers import BASE, free_port

FORKING_RANK = str(SCRIPTS / "forking_rank.py")
# Large enough that a peer noticing a death by its own timeout fails the test.
NO_TIMEOUT = {"RINGDIST_TIMEOUT": "120"}


def _ready(reader: LineReader, n: int, prefixed: bool = True) -> dict[int, tuple[int, list[int]]]:
    """rank -> (pid, its children's pids), from the `ready` lines."""
    pattern = (r"^\[(\d+)\] " if prefixed else r"^()") + r"ready pid=(\d+) children=([\d,]+)$"
    found = reader.wait_for(pattern, count=n, timeout=60)
    return {int(m.group(1) or 0): (int(m.group(2)), [int(c) for c in m.group(3).split(",")]) for m in found}


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _detections(text: str, killed_at: float) -> dict[int, tuple[str, float]]:
    return {int(r): (name, float(t) - killed_at)
            for r, name, t in re.findall(r"^\[(\d+)\] raised (\w+) at ([\d.]+):", text, re.M)}


def test_a_forked_child_cannot_use_the_parents_groups_and_the_rank_goes_on():
    result = run_launcher(["-n", "3", str(SCRIPTS / "fork_child_uses_group.py")], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(3):
        refusals = re.findall(rf"^\[{rank}\] child: RingError: rank {rank}: (\w+) on group 'world': "
                              rf"this group belongs to process (\d+); a forked child \(process \d+\) cannot use it$",
                              result.stdout, re.M)
        assert [op for op, _ in refusals] == ["all_gather", "send", "split", "all_sum"], result.stdout
        assert f"[{rank}] ok 6" in result.stdout  # the rank's own connections survived its child's exit


def test_peers_notice_a_killed_rank_whose_child_holds_its_sockets():
    proc = start_launcher(["-n", "4", "--grace", "30", FORKING_RANK], env=NO_TIMEOUT)
    children: list[int] = []
    try:
        out = LineReader(proc.stdout)
        ready = _ready(out, 4)
        children = [c for _, kids in ready.values() for c in kids]
        victim = 2
        os.kill(ready[victim][0], signal.SIGKILL)
        killed_at = time.time()
        out.wait_for(r"^\[\d\] raised ", count=3, timeout=30)
        detected = _detections("".join(out.lines), killed_at)
    finally:
        kill_tree(proc)
        _kill_all(children)
    assert sorted(detected) == [0, 1, 3], detected
    for rank, (name, seconds) in detected.items():
        assert name == "PeerLostError" and seconds < 5.0, (rank, name, seconds)


def _start_under_torchrun(n: int) -> tuple[list[subprocess.Popen[str]], list[LineReader], dict[int, tuple[int, list[int]]]]:
    """n forking ranks started as torchrun would (no launcher: rank 0 serves the rendezvous during
    init), each ready; again on another port (3 tries in all) when rank 0 found its port taken by
    the time it listened: a port checked free can go to another test's process before then."""
    for attempt in range(3):
        port = free_port()
        procs: list[subprocess.Popen[str]] = []
        try:
            for r in range(n):
                env = {**BASE, **NO_TIMEOUT, "RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r),
                       "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RINGDIST_SECRET": "torchrun-fork-test"}
                procs.append(subprocess.Popen([sys.executable, FORKING_RANK], env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              start_new_session=True))
            readers = [LineReader(p.stdout) for p in procs]
            try:
                ready = {r: _ready(readers[r], 1, prefixed=False)[0] for r in range(n)}
            except AssertionError:
                taken = procs[0].poll() is not None and "Address already in use" in procs[0].stderr.read()
                if not taken or attempt == 2:
                    raise
                _stop(procs)
                continue
            return procs, readers, ready
        except BaseException:
            _stop(procs)
            raise
    raise AssertionError("unreachable")


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    """Each rank's process group (itself and the children it forked), ended rank or not."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


def test_peers_notice_a_killed_rank_whose_child_holds_its_sockets_under_torchrun():
    procs, readers, ready = _start_under_torchrun(3)
    children = [c for _, kids in ready.values() for c in kids]
    try:
        victim = 1
        os.kill(ready[victim][0], signal.SIGKILL)
        killed_at = time.time()
        detected = {}
        for r in (0, 2):
            line = readers[r].wait_for(r"^raised (\w+) at ([\d.]+):", timeout=30)[0]
            detected[r] = (line.group(1), float(line.group(2)) - killed_at)
    finally:
        _stop(procs)
        _kill_all(children)
    for rank, (name, seconds) in detected.items():
        assert name == "PeerLostError" and seconds < 5.0, (rank, name, seconds)


def test_kill_9_of_the_launcher_takes_every_rank_and_child_but_not_a_new_session():
    proc = start_launcher(["-n", "3", FORKING_RANK, "--setsid"], env=NO_TIMEOUT)
    everyone: list[int] = []
    try:
        ready = _ready(LineReader(proc.stdout), 3)
        ranks = [pid for pid, _ in ready.values()]
        in_group = [kids[0] for _, kids in ready.values()]
        own_session = [kids[1] for _, kids in ready.values()]
        everyone = ranks + in_group + own_session
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = wait_until_gone(ranks + in_group, timeout=5)
        assert not left, f"still running 5 s after kill -9 of the launcher: {left} (ranks {ranks}, children {in_group})"
        assert all(pid_alive(pid) for pid in own_session)  # they left the job: not the launcher's to kill
    finally:
        kill_tree(proc)
        _kill_all(everyone)
        wait_until_gone(everyone, timeout=5)


def test_kill_9_of_the_launcher_takes_remote_ranks_and_their_children(tmp_path):
    # "Remote" hosts reached through an agent that execs the keeper on this machine (as `ip netns exec`
    # does): the keeper must outlive the launcher to see its stdin end, and kill the rank's process group.
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"hosts": [{"ssh": "agent-host-a", "ips": ["127.0.0.1"]},
                                              {"ssh": "agent-host-b", "ips": ["127.0.0.1"]}]}))
    proc = start_launcher(["--rsh-agent", str(SCRIPTS / "local_agent.sh"), "--hosts", str(hostfile),
                           "--rendezvous", "127.0.0.1", FORKING_RANK], env=NO_TIMEOUT)
    everyone: list[int] = []
    try:
        ready = _ready(LineReader(proc.stdout), 2)
        keepers = descendants(proc.pid)
        everyone = sorted(set(keepers) | {pid for pid, kids in ready.values() for pid in (pid, *kids)})
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = wait_until_gone(everyone, timeout=5)
        assert not left, f"still running 5 s after kill -9 of the launcher: {left} of {everyone}"
    finally:
        kill_tree(proc)
        _kill_all(everyone)


def test_a_forked_childs_writes_into_a_result_stay_in_the_child():
    # Large results are views of reused blocks (`ringdist.buffers`). A forked child that
    # writes into one (a data-loader worker scribbling on a batch) must change its own copy
    # only, as with any numpy array; and a block the parent reuses for its next result must
    # not show through in the child's.
    import numpy as np

    import ringdist as rd
    from harness import run_ranks

    def rank(g: rd.Group) -> tuple[float, float, float]:
        x = np.full(1 << 18, g.rank() + 1, np.float32)  # 1 MiB: results come from the block cache
        y = rd.all_gather(x, group=g)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 4
            try:
                os.close(r)
                y[:] = -1.0
                os.write(w, b"x")  # written: the parent reuses the block while this child still holds y
                status = 0
                for _ in range(1000):  # until the parent kills it (10 s at most)
                    time.sleep(0.01)
                    if y[0] != -1.0 or y[-1] != -1.0:
                        status = 3  # the parent's next result showed through
                        break
            finally:
                os._exit(status)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        seen = float(y[0]), float(y[-1])
        del y
        z = rd.all_gather(np.full(1 << 18, 9.0, np.float32), group=g)  # may reuse y's block
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return seen[0], seen[1], float(z[0]) if os.WIFSIGNALED(status) else -float(os.WEXITSTATUS(status))

    for seen_first, seen_last, after in run_ranks(2, rank):
        assert (seen_first, seen_last) == (1.0, 2.0), "a child's write showed in its parent's result"
        assert after == 9.0, "the parent's next result showed in the child's (exit status %d)" % -after


def test_a_forked_child_closes_no_file_its_parent_closed_and_reused():
    # A closed endpoint stays tracked for forks until collected; its acceptor's wake-up pipe
    # was closed, and the numbers go to the next files the process opens. A forked child must
    # not close them again.
    from ringdist.endpoint import Endpoint

    ep = Endpoint(b"secret of a closed endpoint", ["127.0.0.1"], connect_timeout=5, label="closed")
    numbers = {ep._acceptor._wake_r, ep._acceptor._wake_w}
    ep.close()
    opened: list[int] = []
    while not numbers <= set(opened) and len(opened) < 64:
        opened.extend(os.pipe())  # the lowest free numbers, until the acceptor's are reused
    try:
        assert numbers <= set(opened)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for fd in numbers:
                    os.fstat(fd)  # OSError (EBADF) if the fork closed it
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child's copies were closed at the fork"
    finally:
        for fd in opened:
            os.close(fd)
        del ep


def test_a_forked_child_s_wait_on_a_sendrecv_fails_at_once_as_any_handle_s():
    # A sendrecv's one handle joins two operations: the child's wait on it waited out its
    # timeout (the parts failed in the child, but nothing told the joined handle).
    result = run_launcher(["-n", "2", str(SCRIPTS / "fork_joined.py")], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("plain", "sendrecv"):
        assert re.search(rf"^\[0\] child {name}: RingError after 0\.\d s$", result.stdout, re.M), result.stdout
    assert "[0] parent [1.0, 1.0, 1.0] (4194304,)" in result.stdout, result.stdout


def test_a_child_forked_while_a_thread_holds_a_group_s_kept_messages_exits():
    # Its exit hook closed the child's copies of the groups, which cleared their kept messages
    # under the lock a parent's thread held at the fork: the child never exited (1 fork in 30
    # under a thread receiving tagged messages; here the lock is held on purpose).
    result = run_launcher(["-n", "2", str(SCRIPTS / "fork_exit_held.py")], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(re.findall(r"^\[\d\] child .*$", result.stdout, re.M)) == [
        "[0] child exited with 3", "[1] child exited with 3"], result.stdout


def test_a_fork_while_another_thread_holds_the_handles_lock_does_not_hang_the_child():
    # The child fails the parent's outstanding handles; a sendrecv's joined handle completes
    # under the handles' lock, which a parent thread held at the fork (rd.wait_any does as it
    # hooks onto the handles): the child hung in os.fork(). Ranks as threads: the fork is the
    # process's own.
    import threading

    import numpy as np

    import ringdist as rd
    from harness import run_ranks
    from ringdist import handle

    def rank(g):
        if g.rank() == 1:
            time.sleep(3)
            rd.send(np.ones(1), 0, group=g)
            rd.recv((1,), np.float64, 0, group=g)
            return None
        pending = rd.sendrecv(np.ones(1), 1, 1, group=g, async_op=True)  # its receive outstanding
        held, release = threading.Event(), threading.Event()

        def holder():
            with handle.lock:
                held.set()
                release.wait(5)

        t = threading.Thread(target=holder)
        t.start()
        held.wait(5)
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        release.set()
        t.join()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG)[0] == 0:
            time.sleep(0.01)
        else:
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "the child hung in os.fork()"
        return pending.wait(timeout=10).tolist()

    assert run_ranks(2, rank, shm=False, timeout=60)[0] == [1.0]


def test_a_fork_hook_that_fails_is_reported_and_the_later_ones_still_run():
    # One registry runs every module's hook in a forked child: a hook that raised skipped the rest
    # (with os.register_at_fork each, Python reported it and ran the others).
    code = ("import os, ringdist.forks as forks\n"
            "ran = []\n"
            "forks.in_child(lambda: 1 / 0)\n"
            "forks.in_child(lambda: ran.append(1))\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(0 if ran else 3)\n"
            "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "0", res.stdout + res.stderr
    assert "ZeroDivisionError" in res.stderr, res.stderr
