"""ringdist-launch and signals: how it ends when signalled, signals it ignores or passes on, and
what a rank started that it must not leave behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import LAUNCHER, SCRIPTS, LineReader, kill_tree, pid_alive, start_launcher, wait_until_gone
from ringdist_launch.policy import Action, JobPolicy, RankInfo

SLEEPER = str(SCRIPTS / "sleeper.py")
EXIT_CODE = str(SCRIPTS / "exit_code.py")
SIGNAL_WAITER = str(SCRIPTS / "signal_waiter.py")
REGROUPED_CHILD = str(SCRIPTS / "regrouped_child.py")
LINGERING_OUTPUT = str(SCRIPTS / "lingering_output.py")
LINUX = sys.platform.startswith("linux")


def started_policy(n: int) -> JobPolicy:
    policy = JobPolicy()
    for r in range(n):
        policy.rank_started(RankInfo(r, "localhost", 100 + r))
    return policy


def kill_pids(pids: list[int]) -> None:
    """SIGKILL processes a test started that outlived their launcher (a failed test must not leave them)."""
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- policy (pure) ------------------------------------------------------------------------


def test_policy_ends_the_launcher_by_the_signal_that_stopped_the_job():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        policy = started_policy(2)
        assert policy.signalled(sig).action is Action.STOP
        assert policy.fatal_signal == sig and policy.exit_status == 128 + sig
    policy = started_policy(2)
    assert policy.signalled(signal.SIGQUIT).action is Action.STOP  # as SIGTERM, but its default dumps core
    assert policy.fatal_signal is None and policy.exit_status == 131
    policy = started_policy(2)
    policy.rank_exited(0, 3)
    policy.signalled(signal.SIGINT)  # the rank's failure is the cause and its code the status; the
    assert policy.fatal_signal == signal.SIGINT and policy.exit_status == 3  # launcher still dies of the signal
    assert started_policy(1).fatal_signal is None


def test_policy_passes_sigusr1_and_sigusr2_on_and_the_job_goes_on():
    policy = started_policy(3)
    policy.rank_exited(1, 0)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        decision = policy.signalled(sig)
        assert decision.action is Action.FORWARD and decision.ranks == (0, 2) and decision.signum == sig
        assert decision.message is None
    assert not policy.stopping and policy.exit_status == 0
    assert policy.signalled(signal.SIGTERM).action is Action.STOP  # the first signal that stops it, not a second


def test_policy_says_a_rank_died_of_a_signal_it_passed_on():
    policy = started_policy(3)
    assert policy.signalled(signal.SIGUSR1).action is Action.FORWARD
    policy.rank_exited(1, -signal.SIGUSR1)
    assert policy.summary() is not None and policy.summary().startswith(
        "ringdist-launch: rank 1 (host localhost, pid 101) was killed by signal 10 (SIGUSR1) first (the launcher had "
        "passed SIGUSR1 on to the ranks; rank 1 has no handler for it)"), policy.summary()
    other = started_policy(3)
    other.rank_exited(1, -signal.SIGUSR1)  # not passed on by the launcher: from outside
    assert "passed" not in (other.summary() or ""), other.summary()


# --- real launches --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["sleeping", "in-collective"])
def test_ctrl_c_reaches_each_rank_as_keyboard_interrupt_once(where):
    # The ranks got SIGTERM: no KeyboardInterrupt, no finally block, no exit handler ran (a program
    # run alone, or under torchrun, gets Ctrl-C's SIGINT). Sent to each process once: the session's
    # signal and the group's together interrupted the exit handlers too.
    proc = start_launcher(["-n", "2", str(SCRIPTS / "interrupted_cleanly.py"), f"--{where}"])
    try:
        out = LineReader(proc.stdout)
        out.wait_for(r"^\[\d\] ready$", 2, timeout=60)
        time.sleep(0.5)  # (rank 0 into its collective)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == -signal.SIGINT
        text, err = out.rest(), proc.stderr.read()
    finally:
        kill_tree(proc)
    for r in (0, 1):
        lines = [line for line in text.splitlines() if line.startswith(f"[{r}] ")]
        assert lines[-2:] == [f"[{r}] finally ran", f"[{r}] exit handler ran"], text
        # Its own KeyboardInterrupt, or (a peer interrupted a moment before it) the peer's, passed on.
        assert f"[{r}] KeyboardInterrupt" in lines or any("aborted by rank" in line and "KeyboardInterrupt" in line
                                                          for line in lines), text
    assert "Exception ignored" not in text + err, text + err  # (ringdist's exit hook is not cut short)
    assert "interrupted by SIGINT; ranks 0,1 stopped by the launcher" in err, err


def test_ctrl_c_stops_the_shell_loop_running_the_launcher():
    """Ctrl-C reaches the shell and the launcher (their process group); a shell goes on with its
    script unless the program it waits for was killed by SIGINT."""
    launch = shlex.join([*LAUNCHER, "-n", "2", SLEEPER, "60"])
    proc = subprocess.Popen(["bash", "-c", f"for i in 1 2; do {launch}; echo went on with $?; done; echo after"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out = LineReader(proc.stdout)
        pids = [int(p) for m in out.wait_for(r"pid (\d+) (\d+)", 2, timeout=60) for p in m.groups()]
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the foreground process group
        assert proc.wait(timeout=30) == -signal.SIGINT, out.rest()
        text = out.rest()
        assert "went on" not in text and "after" not in text, text
        assert wait_until_gone(pids) == []
        assert "interrupted by SIGINT; stopping ranks 0,1" in proc.stderr.read()
    finally:
        kill_tree(proc)


def test_ctrl_c_while_the_ranks_output_is_still_written_ends_the_launcher_by_it():
    # The ranks have ended; a child of theirs that left the job keeps their stdout open, so the
    # launcher waits for the output to end (up to 5 s). A Ctrl-C then went unread: the launcher
    # exited 0 when the wait was over, and a shell loop running it went on.
    proc = start_launcher(["-n", "2", LINGERING_OUTPUT, "20"])
    children: list[int] = []
    try:
        out = LineReader(proc.stdout)
        found = out.wait_for(r"child (\d+) rank (\d+)", 2, timeout=60)
        children = [int(m.group(1)) for m in found]
        assert wait_until_gone([int(m.group(2)) for m in found]) == []  # reaped: what is left is their output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == -signal.SIGINT
        assert "interrupted by SIGINT" in proc.stderr.read()
    finally:
        kill_tree(proc)
        kill_pids(children)


def test_ctrl_c_while_a_failure_stops_the_job_ends_the_launcher_by_it():
    # Rank 1 fails; rank 0 ignores SIGTERM, so the stop waits out its grace. A Ctrl-C meanwhile
    # said "SIGINT again" (it was the first), and the launcher exited 1: a shell loop went on.
    proc = start_launcher(["--grace", "20", "-n", "2", SLEEPER, "60", "--ignore-term"])
    try:
        out = LineReader(proc.stdout)
        pids = {int(m.group(1)): int(m.group(2)) for m in out.wait_for(r"^\[(\d)\] pid (\d+) \d+$", 2, timeout=60)}
        os.kill(pids[1], signal.SIGKILL)  # rank 1 fails
        deadline = time.monotonic() + 20
        while pid_alive(pids[1]) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the launcher is stopping rank 0, which ignores SIGTERM
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == -signal.SIGINT
        err = proc.stderr.read()
        assert "interrupted by SIGINT; killing rank 0 now" in err and "again" not in err, err
        assert "rank 1 (host localhost" in err and "was killed by signal 9 (SIGKILL) first" in err, err
    finally:
        kill_tree(proc)


def test_ctrl_c_while_the_launcher_loads_ends_it_quietly():
    proc = start_launcher(["-n", "1", SLEEPER, "60"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # msgpack loads with the job's modules: it is loading now
            try:
                if "msgpack" in Path(f"/proc/{proc.pid}/maps").read_text():
                    break
            except OSError:
                if not LINUX:
                    time.sleep(0.2)
                    break
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGINT, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        kill_tree(proc)


def test_sighup_ignored_at_start_stays_ignored():
    """`nohup ringdist-launch ...`: a hangup must not stop the job."""
    proc = subprocess.Popen(["nohup", *LAUNCHER, "-n", "2", EXIT_CODE, "-1", "0", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out = LineReader(proc.stdout)
        out.wait_for(r"^\[\d\] pid \d+$", 2, timeout=60)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "interrupted" not in err and "SIGHUP" not in err, err
    finally:
        kill_tree(proc)


def remote_hosts(tmp_path: Path, slots: int) -> list[str]:
    """Options that run `slots` ranks on a "remote" host through an rsh agent that runs them here (a keeper each)."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"hosts": [{"ssh": "rdtest-elsewhere", "ips": ["127.0.0.1"], "slots": slots}]}))
    return ["--rsh-agent", str(SCRIPTS / "local_agent.sh"), "--rendezvous", "127.0.0.1", "--hosts", str(hostfile)]


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
@pytest.mark.parametrize("where", ["local", "remote"])
def test_sigusr1_and_sigusr2_are_passed_on_to_every_rank(sig, where, tmp_path):
    """As mpirun: a scheduler's warning before pre-emption (Slurm's --signal=USR1@60) reaches the ranks."""
    hosts = ["-n", "3"] if where == "local" else remote_hosts(tmp_path, 3)
    proc = start_launcher([*hosts, SIGNAL_WAITER, "30"])
    try:
        out = LineReader(proc.stdout)
        out.wait_for(r"^\[\d\] ready pid=\d+$", 3, timeout=60)
        proc.send_signal(sig)
        got = out.wait_for(rf"^\[(\d)\] got {sig.name}$", 3, timeout=20)
        assert sorted(m.group(1) for m in got) == ["0", "1", "2"]
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ""
    finally:
        kill_tree(proc)


@pytest.mark.skipif(not LINUX, reason="elsewhere the launcher signals a rank's process group alone")
@pytest.mark.parametrize("where", ["local", "remote"])
def test_the_launcher_s_sigterm_reaches_each_process_of_a_rank_once(where, tmp_path):
    # Its process group's signal and then its session's (the launcher's, or a remote rank's
    # keeper's): a program's own SIGTERM handler ran twice (a second signal interrupts the first's).
    hosts = ["-n", "2"] if where == "local" else remote_hosts(tmp_path, 2)
    proc = start_launcher([*hosts, "--timeout", "8", str(SCRIPTS / "term_count.py")])
    try:
        out = LineReader(proc.stdout)
        out.wait_for(r"^\[\d\] ready$", 2, timeout=60)
        assert proc.wait(timeout=30) == 124
        text = out.rest()
    finally:
        kill_tree(proc)
    for r in (0, 1):
        assert f"[{r}] rank got 1" in text and f"[{r}] child got 1" in text, text


def _state(pid: int) -> str:
    """A process's state letter (R, S, T: stopped, ...), or '' once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return ""


@pytest.mark.skipif(not LINUX, reason="reads process states from /proc")
@pytest.mark.parametrize("where", ["local", "remote"])
def test_ctrl_z_suspends_every_rank_and_the_job_goes_on_when_continued(where, tmp_path):
    # Ctrl-Z (SIGTSTP) stopped the launcher alone: each rank leads a session of its own, so the
    # terminal's signal never reached them, and they ran on. Now they stop too, and go on when the
    # launcher is continued (fg: SIGCONT); stopped for longer than RINGDIST_TIMEOUT, a rank waiting
    # in a collective or for a message timed out as it was continued: the stop is not counted.
    hosts = ["-n", "2"] if where == "local" else remote_hosts(tmp_path, 2)
    proc = start_launcher([*hosts, str(SCRIPTS / "suspended.py"), "12"], env={"RINGDIST_TIMEOUT": "1.5"})
    try:
        out = LineReader(proc.stdout)
        pids = [int(m.group(1)) for m in out.wait_for(r"^\[\d\] ready pid=(\d+)$", 2, timeout=60)]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTSTP)
        deadline = time.monotonic() + 20
        while {_state(pid) for pid in [proc.pid, *pids]} != {"T"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [_state(pid) for pid in [proc.pid, *pids]] == ["T", "T", "T"]
        time.sleep(3.0)  # twice the ranks' timeout
        assert [_state(pid) for pid in pids] == ["T", "T"]
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=60) == 0, out.rest() + proc.stderr.read()
        text = out.rest()
        assert "[0] done 24" in text and "[1] done 24" in text, text
    finally:
        kill_tree(proc)


@pytest.mark.skipif(not LINUX, reason="reads process states from /proc")
def test_the_time_a_job_is_suspended_does_not_count_toward_its_timeout(tmp_path):
    # --timeout limits the job's run time: a job suspended for longer than its slack was killed
    # (124) soon after it was continued.
    script = tmp_path / "ticks.py"
    script.write_text("import os, time\nprint(f'ready pid={os.getpid()}', flush=True)\n"
                      "for _ in range(30):\n    time.sleep(0.1)\nprint('done', flush=True)\n")
    proc = start_launcher(["-n", "1", "--timeout", "6", str(script)])
    try:
        out = LineReader(proc.stdout)
        pid = int(out.wait_for(r"^\[0\] ready pid=(\d+)$", 1, timeout=60)[0].group(1))
        time.sleep(0.5)
        proc.send_signal(signal.SIGTSTP)
        deadline = time.monotonic() + 20
        while (_state(proc.pid), _state(pid)) != ("T", "T") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4.0)  # with the 3 s the rank runs, past the 6 s limit
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=60) == 0, out.rest() + proc.stderr.read()
        assert "[0] done" in out.rest()
    finally:
        kill_tree(proc)


def test_sigquit_stops_the_job_as_sigterm_does():
    proc = start_launcher(["-n", "2", SLEEPER, "60"])
    try:
        out = LineReader(proc.stdout)
        pids = [int(p) for m in out.wait_for(r"pid (\d+) (\d+)", 2, timeout=60) for p in m.groups()]
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(timeout=30) == 131
        assert wait_until_gone(pids) == []
        assert proc.stderr.read().splitlines() == [
            "ringdist-launch: interrupted by SIGQUIT; stopping ranks 0,1",
            "ringdist-launch: interrupted by SIGQUIT; ranks 0,1 stopped by the launcher",
        ]
    finally:
        kill_tree(proc)


@pytest.mark.skipif(not LINUX, reason="a rank's session is found through /proc")
@pytest.mark.parametrize("end", ["normal", "launcher killed", "remote normal", "remote launcher killed"])
def test_a_process_in_its_own_group_goes_with_the_rank_one_in_its_own_session_stays(end, tmp_path):
    """A rank's child that moved to a process group of its own is still in the rank's session, and the
    job's; a child that started its own session has left the job. A remote rank's keeper does the same."""
    seconds = "0.5" if end.endswith("normal") else "60"
    hosts = remote_hosts(tmp_path, 2) if end.startswith("remote") else ["-n", "2"]
    proc = start_launcher([*hosts, REGROUPED_CHILD, seconds])
    children: list[int] = []
    try:
        found = LineReader(proc.stdout).wait_for(r"children (\d+) (\d+)", 2, timeout=60)
        children = [int(p) for m in found for p in m.groups()]
        regrouped, left = children[0::2], children[1::2]
        if end.endswith("normal"):
            assert proc.wait(timeout=30) == 0
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert wait_until_gone(regrouped) == []
        assert all(pid_alive(p) for p in left)
    finally:
        kill_tree(proc)
        kill_pids(children)
