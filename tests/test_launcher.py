"""ringdist-launch: the pure parts (argument splitting, plan, policy) and real launches on localhost."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import (
    HOSTFILES,
    ROOT,
    SCRIPTS,
    LineReader,
    kill_tree,
    loopback_aliases,
    pid_alive,
    run_launcher,
    start_launcher,
    wait_until_gone,
)
from ringdist import wire
from ringdist.channel import send_blocking
from ringdist.errors import ConfigError
from ringdist.handshake import client_handshake
from ringdist_launch.hostfile import load_hostfile, parse_hostfile
from ringdist.rendezvous import RENDEZVOUS_GROUP, RendezvousServer, encode, parse_address
from ringdist_launch.cli import _parser, parse_command_line
from ringdist_launch.plan import REDACTED, Target, build_plan, describe_plan, local_hostfile
from ringdist_launch.policy import Action, Decision, JobPolicy, Outcome, RankInfo, after_output

PY = sys.executable
RANK_ENV = str(SCRIPTS / "rank_env.py")
EXIT_CODE = str(SCRIPTS / "exit_code.py")
SLEEPER = str(SCRIPTS / "sleeper.py")
CHATTER = str(SCRIPTS / "chatter.py")
HEX_SECRET = re.compile(r"[0-9a-f]{64}")


def rank_reports(stdout: str) -> dict[int, dict]:
    """The JSON line each rank of rank_env.py printed, by rank."""
    reports = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\[(\d+)\] (\{.*\})", line)
        if m:
            reports[int(m.group(1))] = json.loads(m.group(2))
    return reports


def launcher_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ringdist-launch:")]


# --- command line splitting (pure) ---------------------------------------------------


def parse(argv: list[str]):
    return parse_command_line(_parser(), argv)


def test_options_stop_at_the_script():
    options, target = parse(["-n", "2", "-v", "s.py", "-n", "5", "--env", "X=1"])
    assert options.nprocs == 2 and options.verbose and options.env == []
    assert target == Target("script", "s.py", ("-n", "5", "--env", "X=1"))


def test_module_and_command_targets():
    options, target = parse(["--env", "A=1", "-m", "pkg.mod", "-v", "x"])
    assert options.env == ["A=1"] and not options.verbose
    assert target == Target("module", "pkg.mod", ("-v", "x"))
    assert parse(["-mpkg", "a"])[1] == Target("module", "pkg", ("a",))
    assert parse(["-n", "3", "--", "echo", "-n", "hi"])[1] == Target("command", "echo", ("-n", "hi"))


def test_option_values_are_not_mistaken_for_the_script():
    options, target = parse(["--cwd", "/tmp", "--hosts", "h.json", "--timeout=3", "-n2", "run.py"])
    assert (options.cwd, options.hosts, options.timeout, options.nprocs) == ("/tmp", "h.json", 3.0, 2)
    assert target == Target("script", "run.py", ())


def test_target_command_lines():
    assert Target("script", "a.py", ("x",)).argv("py") == ["py", "a.py", "x"]
    assert Target("script", "./run.sh", ("x",)).argv("py") == ["./run.sh", "x"]
    assert Target("module", "m", ("x",)).argv("py") == ["py", "-m", "m", "x"]
    assert Target("command", "echo", ("x",)).argv("py") == ["echo", "x"]


# --- plan (pure) ------------------------------------------------------------------------


def test_plan_environment_and_precedence():
    hosts = [{"ips": ["127.0.0.2", "127.0.0.3"], "slots": 2}, {"ssh": "localhost"}]
    hostfile = parse_hostfile({"hosts": hosts, "envs": ["FOO=file", "BAR=1"]}, "h.json")
    target = Target("script", "s.py")
    plan = build_plan(target, hostfile, python="py", env=[("FOO", "cli")], cwd="/w", verbose=True)
    assert plan.world_size == 3 and plan.cwd == "/w"
    env = plan.ranks[1].env("127.0.0.1:5000", "s3cret")
    assert env == {
        "FOO": "cli",
        "BAR": "1",
        "PYTHONUNBUFFERED": "1",
        "RINGDIST_RANK": "1",
        "RINGDIST_WORLD_SIZE": "3",
        "RINGDIST_LOCAL_RANK": "1",
        "RINGDIST_LOCAL_WORLD_SIZE": "3",  # every local rank shares this machine's cores
        "RINGDIST_RENDEZVOUS": "127.0.0.1:5000",
        "RINGDIST_SECRET": "s3cret",
        "RINGDIST_BIND": "127.0.0.2,127.0.0.3",
        "RINGDIST_HOST": "127.0.0.2",
        "RANK": "1",
        "WORLD_SIZE": "3",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",  # the ranks LOCAL_RANK counts among: this entry's (the third's ips differ)
        "RINGDIST_VERBOSE": "1",
    }
    third = plan.ranks[2].env("r", "s")
    assert (third["RINGDIST_HOST"], third["RINGDIST_BIND"], third["LOCAL_RANK"]) == ("localhost", "127.0.0.1", "0")
    quiet = build_plan(target, hostfile, python="py")
    assert "RINGDIST_VERBOSE" not in quiet.ranks[0].env("r", "s")


def test_plan_uses_first_n_slots_and_rejects_too_many():
    hostfile = load_hostfile(HOSTFILES / "localhost-4.json")
    assert build_plan(Target("script", "s.py"), hostfile, nprocs=2, python="py").world_size == 2
    with pytest.raises(ConfigError, match="5 ranks requested but the hosts have 4 slots"):
        build_plan(Target("script", "s.py"), hostfile, nprocs=5, python="py")


def test_plan_refuses_to_let_users_override_launcher_variables():
    with pytest.raises(ConfigError, match="--env: RINGDIST_RANK is set by the launcher"):
        build_plan(Target("script", "s.py"), local_hostfile(2), python="py", env=[("RINGDIST_RANK", "7")])


def test_dry_run_description_redacts_the_secret():
    plan = build_plan(Target("script", "s.py", ("-n", "5")), local_hostfile(2), python="py")
    text = describe_plan(plan)
    assert "cmd: py s.py -n 5" in text
    assert text.count(f"RINGDIST_SECRET={REDACTED}") == 2
    assert "RINGDIST_RANK=1" in text


# --- policy (pure) ----------------------------------------------------------------------


def started_policy(n: int, timeout: float | None = None) -> JobPolicy:
    policy = JobPolicy(timeout)
    for r in range(n):
        policy.rank_started(RankInfo(r, "localhost", 100 + r))
    return policy


def test_policy_all_ranks_succeed():
    policy = started_policy(3)
    for r in range(3):
        assert policy.rank_exited(r, 0).action is Action.NOTHING
    assert policy.exit_status == 0 and policy.summary() is None and not policy.running


def test_policy_first_failure_wins():
    policy = started_policy(4)
    policy.rank_exited(0, 0)
    decision = policy.rank_exited(2, 3)
    assert decision.action is Action.STOP and decision.ranks == (1, 3)
    assert decision.message == (
        "ringdist-launch: rank 2 (host localhost, pid 102) exited with code 3 first; stopping ranks 1,3"
    )
    assert policy.rank_exited(1, -15).action is Action.NOTHING  # a consequence, not a cause
    assert policy.grace_expired() == type(decision)(Action.KILL, (3,))
    policy.rank_exited(3, -9)
    assert policy.exit_status == 3
    assert policy.summary() == (
        "ringdist-launch: rank 2 (host localhost, pid 102) exited with code 3 first; "
        "rank 0 had already exited (code 0); ranks 1,3 stopped by the launcher (rank 3 killed with SIGKILL)"
    )


def test_policy_summary_names_the_stopped_ranks_that_failed_ranks_timed_out_waiting_for():
    policy = started_policy(5)
    left = {2: 1.0, 0: 1.5, 4: 1.7}
    for rank, code in ((0, 1), (4, 1), (2, 1), (1, -15), (3, -9)):
        policy.rank_exited(rank, code, left)
    # Rank 4 waited for rank 0, which failed on its own: not named; rank 2's wait for a stopped
    # rank (3) and one that failed (0) names only rank 3.
    waited = {0: (1, 3), 2: (3, 0), 4: (0,), 1: (3,)}
    assert policy.summary(waited) == (
        "ringdist-launch: rank 2 (host localhost, pid 102) exited with code 1 first; ranks 0,4 then failed on "
        "their own; ranks 1,3 stopped by the launcher; rank 2 had timed out waiting for rank 3; "
        "rank 0 had timed out waiting for ranks 1,3")
    assert policy.summary({4: (0,)}) == policy.summary()  # nothing to add


def test_policy_signal_exit_status_and_last_rank_failing():
    policy = started_policy(2)
    policy.rank_exited(0, 0)
    decision = policy.rank_exited(1, -9)
    assert decision == Decision(Action.STOP) and policy.exit_status == 137  # nothing to stop: the summary tells
    assert policy.summary() == (
        "ringdist-launch: rank 1 (host localhost, pid 101) was killed by signal 9 (SIGKILL) first; "
        "rank 0 had already exited (code 0)"
    )


def test_policy_single_failing_rank_has_no_summary():
    policy = started_policy(1)
    decision = policy.rank_exited(0, 4)
    assert decision.message == "ringdist-launch: rank 0 (host localhost, pid 100) exited with code 4 first; " \
        "no other rank was running"
    assert policy.exit_status == 4 and policy.summary() is None


def test_policy_names_the_rank_that_left_first_not_the_first_exit_seen():
    # Rank 1 left (sys.exit(1)); rank 0 raised PeerLostError and finished exiting first.
    policy = started_policy(2)
    wait = policy.rank_exited(0, 1, left={1: 10.0, 0: 10.2})
    assert wait == Decision(Action.WAIT, (1,)) and policy.settling and not policy.stopping
    decision = policy.rank_exited(1, 1, left={1: 10.0, 0: 10.2})
    assert decision == Decision(Action.STOP)
    assert policy.exit_status == 1
    assert policy.summary() == (
        "ringdist-launch: rank 1 (host localhost, pid 101) exited with code 1 first; rank 0 then failed on its own"
    )


def test_policy_a_rank_that_returned_early_is_mentioned():
    # Rank 1 returned (code 0) before a collective; rank 0 then failed with PeerLostError.
    policy = started_policy(2)
    assert policy.rank_exited(0, 1, left={1: 3.0, 0: 3.1}).action is Action.WAIT
    assert policy.rank_exited(1, 0, left={1: 3.0, 0: 3.1}) == Decision(Action.STOP)
    assert policy.exit_status == 1
    assert policy.summary() == (
        "ringdist-launch: rank 0 (host localhost, pid 100) exited with code 1 first; rank 1 had already exited (code 0)"
    )
    # The same when the exits are seen in the other order.
    policy = started_policy(2)
    assert policy.rank_exited(1, 0, left={1: 3.0}) == Decision(Action.NOTHING)
    policy.rank_exited(0, 1, left={1: 3.0, 0: 3.1})
    assert policy.summary() == (
        "ringdist-launch: rank 0 (host localhost, pid 100) exited with code 1 first; rank 1 had already exited (code 0)"
    )


def test_policy_several_failures_close_together_and_who_was_stopped():
    policy = started_policy(5)
    left = {1: 1.0, 0: 1.5, 3: 1.7}
    assert policy.rank_exited(0, 1, left) == Decision(Action.WAIT, (1, 3))
    assert policy.rank_exited(3, 1, left) == Decision(Action.NOTHING)  # still waiting for rank 1
    stop = policy.rank_exited(1, 7, left)
    assert stop.action is Action.STOP and stop.ranks == (2, 4) and policy.exit_status == 7
    assert "rank 1 (host localhost, pid 101) exited with code 7 first; stopping ranks 2,4" in stop.message
    policy.rank_exited(2, -15, left)
    policy.rank_exited(4, -15, left)
    assert policy.summary() == (
        "ringdist-launch: rank 1 (host localhost, pid 101) exited with code 7 first; "
        "ranks 0,3 then failed on their own; ranks 2,4 stopped by the launcher"
    )


def test_policy_a_stopped_rank_that_was_already_leaving_failed_on_its_own():
    policy = started_policy(3)
    stop = policy.rank_exited(1, 1, left={1: 1.0, 0: 1.1})  # rank 0 leaving too, but after rank 1
    assert stop == Decision(Action.WAIT, (0,))
    stop = policy.settle_expired(left={1: 1.0, 0: 1.1})  # rank 0 is slow to exit: stop it with the rest
    assert stop.action is Action.STOP and stop.ranks == (0, 2)
    policy.rank_exited(0, 1, left={1: 1.0, 0: 1.1})  # its own failure, not the launcher's SIGTERM
    policy.rank_exited(2, -15, left={1: 1.0, 0: 1.1, 2: 1.2})
    assert policy.summary() == (
        "ringdist-launch: rank 1 (host localhost, pid 101) exited with code 1 first; "
        "rank 0 then failed on its own; rank 2 stopped by the launcher"
    )


def test_policy_no_wait_when_nobody_else_is_leaving_and_signals_end_the_wait():
    policy = started_policy(3)
    assert policy.rank_exited(2, 5, left={2: 1.0}).action is Action.STOP  # nobody else leaving
    policy = started_policy(3)
    assert policy.rank_exited(0, 1, left={1: 1.0}).action is Action.WAIT
    decision = policy.signalled(signal.SIGINT)  # a rank failed before the Ctrl-C: it is the cause
    assert decision.action is Action.STOP and decision.ranks == (1, 2) and policy.exit_status == 1
    assert policy.signalled(signal.SIGINT).action is Action.KILL


def test_policy_interrupts_and_timeout():
    policy = started_policy(2)
    first = policy.signalled(signal.SIGINT)
    assert first.action is Action.STOP and first.ranks == (0, 1) and policy.exit_status == 130
    second = policy.signalled(signal.SIGINT)
    assert second.action is Action.KILL and second.ranks == (0, 1)
    assert policy.exit_status == 130 and policy.fatal_signal == signal.SIGINT

    policy = started_policy(1, timeout=2.5)
    assert "job exceeded --timeout 2.5s" in policy.timed_out().message
    assert policy.exit_status == 124

    policy = started_policy(1)
    policy.signalled(signal.SIGTERM)
    assert policy.exit_status == 143 and policy.fatal_signal == signal.SIGTERM


def test_policy_start_failure():
    policy = started_policy(1)
    decision = policy.start_failed(1, "localhost", FileNotFoundError(2, "No such file or directory", "nope"))
    assert decision.ranks == (0,) and policy.exit_status == 127
    assert "cannot start rank 1 (host localhost): No such file or directory: 'nope'" in decision.message


def test_policy_a_remote_rank_that_could_not_start_either_is_said_so():
    policy = started_policy(4)
    first = policy.host_failed(0, "a", "ssh exited with code 255 before the rank started", 255)
    assert first.action is Action.STOP and first.ranks == (1, 2, 3) and policy.exit_status == 255
    second = policy.host_failed(1, "b", "ssh exited with code 255 before the rank started", 255)
    assert second == Decision(Action.NOTHING)
    policy.host_failed(2, "c", "ssh was killed by signal 15 before the rank started", 255, by_signal=True)  # the stop
    for rank, code in ((1, 255), (2, 255), (3, -15)):
        policy.rank_exited(rank, code)
    assert policy.exit_status == 255
    assert policy.summary() == ("ringdist-launch: cannot start rank 0 on host a: ssh exited with code 255 before the "
                                "rank started; rank 1 could not be started either; ranks 2,3 stopped by the launcher")


# --- real launches ------------------------------------------------------------------------


def test_rank_variables_and_shared_secret():
    result = run_launcher(["-n", "3", RANK_ENV])
    assert result.returncode == 0, result.stderr
    reports = rank_reports(result.stdout)
    assert sorted(reports) == [0, 1, 2]
    for rank, report in reports.items():
        env = report["env"]
        assert env["RINGDIST_RANK"] == env["RANK"] == str(rank)
        assert env["RINGDIST_WORLD_SIZE"] == env["WORLD_SIZE"] == "3"
        assert env["RINGDIST_LOCAL_RANK"] == env["LOCAL_RANK"] == str(rank)
        assert env["RINGDIST_BIND"] == "127.0.0.1" and env["RINGDIST_HOST"] == "localhost"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", env["RINGDIST_RENDEZVOUS"])
        assert env["PYTHONUNBUFFERED"] == "1" and env["RINGDIST_VERBOSE"] is None
        assert report["secret_len"] == 64
    assert len({r["secret_digest"] for r in reports.values()}) == 1
    assert len({r["env"]["RINGDIST_RENDEZVOUS"] for r in reports.values()}) == 1
    assert not launcher_lines(result.stderr)
    assert not HEX_SECRET.search(result.stdout + result.stderr)


def test_each_job_gets_a_fresh_secret():
    digests = [rank_reports(run_launcher([RANK_ENV]).stdout)[0]["secret_digest"] for _ in range(2)]
    assert digests[0] != digests[1]


def test_loopback_hostfile_binds_each_rank_to_its_address():
    loopback_aliases()
    result = run_launcher(["--hosts", str(HOSTFILES / "loopback-4.json"), RANK_ENV])
    assert result.returncode == 0, result.stderr
    reports = rank_reports(result.stdout)
    assert [reports[r]["env"]["RINGDIST_BIND"] for r in range(4)] == [f"127.0.0.{i}" for i in range(1, 5)]
    assert all(reports[r]["env"]["LOCAL_RANK"] == "0" for r in range(4))


def test_hostfile_with_n_uses_first_slots(tmp_path):
    result = run_launcher(["--hosts", str(HOSTFILES / "localhost-4.json"), "-n", "2", RANK_ENV])
    assert result.returncode == 0, result.stderr
    assert sorted(rank_reports(result.stdout)) == [0, 1]
    two = HOSTFILES / "localhost-2.json"
    too_many = run_launcher(["--hosts", str(two), "-n", "3", RANK_ENV])
    assert too_many.returncode == 2
    assert too_many.stderr.strip() == f"ringdist-launch: error: {two}: 3 ranks requested but the hosts have 2 slots"


def test_hosts_list_argument():
    loopback_aliases()
    result = run_launcher(["--hosts", "localhost:2,127.0.0.2,localhost", RANK_ENV])
    assert result.returncode == 0, result.stderr
    reports = rank_reports(result.stdout)
    envs = [reports[r]["env"] for r in range(4)]
    assert [e["RINGDIST_BIND"] for e in envs] == ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.1"]
    # localhost named twice is one machine; 127.0.0.2 stands in for another one. RINGDIST_LOCAL_RANK
    # counts the ranks on this computer, as RINGDIST_LOCAL_WORLD_SIZE does.
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "2"]
    assert [e["RINGDIST_LOCAL_RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["RINGDIST_LOCAL_WORLD_SIZE"] for e in envs] == ["4"] * 4


def test_env_options_and_hostfile_envs(tmp_path):
    hostfile = tmp_path / "h.json"
    hostfile.write_text(json.dumps({"hosts": [{"slots": 2}], "envs": ["FOO=file", "BAR=fromfile"]}))
    result = run_launcher(
        ["--hosts", str(hostfile), "--env", "FOO=one", "--env", "FOO=two words", "-v", RANK_ENV]
    )
    assert result.returncode == 0, result.stderr
    for report in rank_reports(result.stdout).values():
        assert report["env"]["FOO"] == "two words"
        assert report["env"]["BAR"] == "fromfile"
        assert report["env"]["RINGDIST_VERBOSE"] == "1"
    assert any("rendezvous listening at 127.0.0.1:" in line for line in launcher_lines(result.stderr))
    assert not HEX_SECRET.search(result.stdout + result.stderr)


def test_cwd(tmp_path):
    result = run_launcher(["-n", "2", "--cwd", str(tmp_path), RANK_ENV])
    assert result.returncode == 0, result.stderr
    assert {os.path.realpath(r["cwd"]) for r in rank_reports(result.stdout).values()} == {
        os.path.realpath(tmp_path)
    }


def test_module_target():
    result = run_launcher(["-n", "2", "--cwd", str(SCRIPTS), "-m", "rank_env", "-n", "9"])
    assert result.returncode == 0, result.stderr
    reports = rank_reports(result.stdout)
    assert sorted(reports) == [0, 1] and reports[0]["argv"] == ["-n", "9"]


def test_command_target():
    code = "import os, sys; print('cmd', os.environ['RANK'], sys.argv[1:])"
    result = run_launcher(["-n", "2", "--", PY, "-c", code, "-n", "7"])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["[0] cmd 0 ['-n', '7']", "[1] cmd 1 ['-n', '7']"]


def test_options_after_the_script_belong_to_the_script():
    result = run_launcher(["-n", "2", RANK_ENV, "-n", "5", "--timeout", "x", "--", "y"])
    assert result.returncode == 0, result.stderr
    reports = rank_reports(result.stdout)
    assert sorted(reports) == [0, 1]
    assert reports[1]["argv"] == ["-n", "5", "--timeout", "x", "--", "y"]
    assert reports[1]["env"]["WORLD_SIZE"] == "2"


def test_dry_run_starts_nothing_and_redacts_the_secret(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"
    result = run_launcher(["-n", "2", "--env", "A=1", "--dry-run", "--", PY, "-c", code])
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert result.stdout.count("RINGDIST_SECRET=<redacted>") == 2
    assert "RINGDIST_RANK=1" in result.stdout and "A=1" in result.stdout
    assert f"cmd: {PY} -c" in result.stdout
    assert not HEX_SECRET.search(result.stdout + result.stderr)


# --- output --------------------------------------------------------------------------------


def test_prefixed_lines_never_interleave():
    lines, width = 2000, 300
    result = run_launcher(["-n", "4", CHATTER, str(lines), str(width)], timeout=90)
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        seen = {r: [] for r in range(4)}
        for line in stream.splitlines():
            m = re.fullmatch(r"\[(\d)\] r=(\d) i=(\d+) ([a-j]+)", line)
            assert m and m.group(1) == m.group(2), f"mangled line: {line[:120]!r}"
            rank = int(m.group(1))
            assert m.group(4) == "abcdefghij"[rank] * width, f"mangled line: {line[:120]!r}"
            seen[rank].append(int(m.group(3)))
        assert all(seen[r] == list(range(lines)) for r in range(4))


def test_partial_last_line_binary_output_and_no_prefix():
    code = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe ok\\nno newline'); sys.stderr.write('err')"
    result = run_launcher(["--", PY, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[0] \ufffd\ufffd ok\n[0] no newline\n"
    assert result.stderr == "[0] err\n"
    plain = run_launcher(["-n", "2", "--no-prefix", "--", PY, "-c", "print('plain')"])
    assert plain.stdout == "plain\nplain\n"


# --- failures -------------------------------------------------------------------------------


def test_exit_code_of_the_first_failing_rank_and_others_stopped():
    started = time.monotonic()
    result = run_launcher(["-n", "4", EXIT_CODE, "2", "3", "60"])
    assert time.monotonic() - started < 20
    assert result.returncode == 3
    assert "[2] failing with 3" in result.stderr
    lines = launcher_lines(result.stderr)
    first = r"ringdist-launch: rank 2 \(host localhost, pid \d+\) exited with code 3 first; stopping ranks 0,1,3"
    assert re.fullmatch(first, lines[0]), lines
    assert lines[-1].endswith("exited with code 3 first; ranks 0,1,3 stopped by the launcher"), lines
    assert "Traceback" not in result.stderr


EARLY_EXIT = """
import sys
import numpy as np
import ringdist as rd

g = rd.init()
if g.rank() == 1:
    sys.exit(int(sys.argv[1]))  # leaves before the collective rank 0 is blocked in
rd.all_sum(np.ones(4))
"""


@pytest.mark.parametrize("code", [1, 0])
def test_a_rank_leaving_early_is_blamed_not_the_peer_it_made_fail(tmp_path, code):
    """Rank 0 raises PeerLostError and may finish exiting before rank 1 does; rank 1 is still the cause."""
    script = tmp_path / "early_exit.py"
    script.write_text(EARLY_EXIT)
    for _ in range(3):  # the exits race: one run proves little
        result = run_launcher(["-n", "2", str(script), str(code)])
        assert result.returncode == 1, result.stderr
        lines = launcher_lines(result.stderr)
        if code:
            assert re.fullmatch(r"ringdist-launch: rank 1 \(host localhost, pid \d+\) exited with code 1 first; "
                                r"rank 0 (then failed in turn|stopped by the launcher)", lines[-1]), lines
        else:
            assert "PeerLostError" in result.stderr
            # (linked to rank 1's exit where rank 0's error named its departure, not only a closed connection)
            assert re.fullmatch(r"ringdist-launch: rank 0 \(host localhost, pid \d+\) exited with code 1 first(, on "
                                r"hearing that rank 1 had left the job \(it exited with code 0\)|; rank 1 had already "
                                r"exited \(code 0\))", lines[-1]), lines
        assert all("; stopping rank 0" in line for line in lines[:-1]), lines  # the cause once, then the summary
        assert len(lines) <= 2, lines


def test_a_rank_exiting_before_init_is_blamed_not_the_peers_it_made_fail(tmp_path):
    """It never registers, so no control connection says when it left: counted as leaving last,
    it lost to a peer whose init() failed on hearing of it (in 2 runs of 12 at 8 ranks)."""
    script = tmp_path / "before_init.py"
    script.write_text("import os, sys, time\nimport ringdist as rd\n"
                      "if os.environ['RINGDIST_RANK'] == '5':\n    time.sleep(0.5)\n    sys.exit(3)\nrd.init()\n")
    for _ in range(3):  # the exits race: one run proves little
        result = run_launcher(["-n", "8", str(script)], timeout=60)
        lines = launcher_lines(result.stderr)
        assert result.returncode == 3, result.stderr
        assert re.match(r"ringdist-launch: rank 5 \(host localhost, pid \d+\) exited with code 3 first", lines[-1]), lines


def test_rank_killed_by_a_signal_gives_128_plus_n():
    result = run_launcher(["-n", "2", EXIT_CODE, "1", "kill", "60"])
    assert result.returncode == 137
    assert "rank 1 (host localhost, pid" in result.stderr
    assert "was killed by signal 9 (SIGKILL) first; stopping rank 0" in result.stderr


def test_rank_ignoring_sigterm_is_killed_after_the_grace_period():
    started = time.monotonic()
    proc = start_launcher(["-n", "2", "--grace", "0.5", SLEEPER, "60", "--ignore-term"])
    try:
        matches = LineReader(proc.stdout).wait_for(r"\[(\d)\] pid (\d+) (\d+)", 2)
        rank0 = next(int(m.group(2)) for m in matches if m.group(1) == "0")
        pids = [int(p) for m in matches for p in m.groups()[1:]]
        os.kill(rank0, signal.SIGKILL)
        assert proc.wait(timeout=20) == 137
        assert time.monotonic() - started < 20
        assert wait_until_gone(pids) == []
        assert "(rank 1 killed with SIGKILL)" in proc.stderr.read()
    finally:
        kill_tree(proc)


def test_command_not_found_exits_127():
    result = run_launcher(["-n", "2", "--", "ringdist-no-such-command"])
    assert result.returncode == 127
    assert launcher_lines(result.stderr) == [
        "ringdist-launch: cannot start rank 0 (host localhost): No such file or directory: "
        "'ringdist-no-such-command'; no other rank was running"
    ]


def test_timeout_stops_the_job_with_124():
    started = time.monotonic()
    result = run_launcher(["-n", "2", "--timeout", "1", SLEEPER, "60"])
    assert result.returncode == 124
    assert time.monotonic() - started < 20
    assert "job exceeded --timeout 1s; stopping ranks 0,1" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_to_the_launcher_stops_every_rank_and_then_ends_it(sig):
    proc = start_launcher(["-n", "3", SLEEPER, "60"])
    try:
        out = LineReader(proc.stdout)
        pids = [int(p) for m in out.wait_for(r"pid (\d+) (\d+)", 3) for p in m.groups()]
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == -sig  # killed by it, once the job is stopped: as a shell expects
        assert wait_until_gone(pids, timeout=5) == []
        assert f"interrupted by {signal.Signals(sig).name}; stopping ranks 0,1,2" in proc.stderr.read()
    finally:
        kill_tree(proc)


def test_second_sigint_kills_at_once():
    proc = start_launcher(["-n", "2", "--grace", "60", SLEEPER, "60", "--ignore-term"])
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        pids = [int(p) for m in out.wait_for(r"pid (\d+) (\d+)", 2) for p in m.groups()]
        proc.send_signal(signal.SIGINT)
        err.wait_for("stopping ranks 0,1")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == -signal.SIGINT
        assert time.monotonic() - started < 10
        assert wait_until_gone(pids) == []
        err.wait_for(r"SIGINT again; killing ranks 0,1 now")
    finally:
        kill_tree(proc)


SIGNAL_RACE = """
import random, signal, threading, time
from ringdist_launch.job import _Inbox, _Signalled, _signals_to

inbox = _Inbox()
main = threading.main_thread().ident
go = threading.Semaphore(0)

def sender():
    while True:
        go.acquire()
        for _ in range(random.randrange(60)):  # land anywhere around the main thread entering its wait
            pass
        signal.pthread_kill(main, signal.SIGINT)

threading.Thread(target=sender, daemon=True).start()
late = 0
with _signals_to(inbox):
    for _ in range(1000):
        go.release()
        started = time.monotonic()
        event = inbox.get(timeout=10.0)  # a signal the wait missed leaves it to its timeout
        late += event is None or time.monotonic() - started > 5.0
        assert event in (None, _Signalled(signal.SIGINT)), event
        while event is None:
            event = inbox.get(timeout=10.0)
print("late", late)
"""


def test_a_signal_at_any_moment_wakes_the_supervisor_at_once():
    """A signal landing as the main thread entered its wait was seen only when the wait timed out
    (the grace period): a second Ctrl-C then seemed ignored. Now the signal itself wakes the wait."""
    result = subprocess.run([PY, "-c", SIGNAL_RACE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["late", "0"]


def control_client(server: RendezvousServer, secret: bytes, rank: int, size: int) -> socket.socket:
    """Register `rank` at `server` as a rank's bootstrap does; the socket is its control connection."""
    sock = socket.create_connection(parse_address(server.address), timeout=10)
    deadline = time.monotonic() + 10
    hello = wire.make_hello(wire.job_id(secret), RENDEZVOUS_GROUP, rank, "register", 0, os.urandom(wire.NONCE_SIZE))
    client_handshake(sock, secret, hello, deadline, "the rendezvous")
    send_blocking(sock, encode({"type": "register", "rank": rank, "size": size,
                                "addresses": [["127.0.0.1", 1]], "host": "h", "pid": 1}), deadline)
    return sock


def test_rendezvous_notes_when_each_control_connection_closed_in_order():
    secret = "ab" * 32
    server = RendezvousServer(secret, 4)
    server.start()
    try:
        socks = [control_client(server, secret.encode(), r, 4) for r in range(4)]
        assert server.wait_delivered(10)
        assert server.disconnected() == {}
        for r in (2, 0, 1):  # back to back: the order must not depend on which server thread runs first
            socks[r].shutdown(socket.SHUT_RDWR)
            if not sys.platform.startswith("linux"):  # no epoll: each connection's thread notes its own
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while len(server.disconnected()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        left = server.disconnected()
        assert sorted(left, key=left.__getitem__) == [2, 0, 1]
        assert 3 not in left  # (still connected)
    finally:
        server.close()
    time.sleep(0.1)
    assert 3 not in server.disconnected()  # closed by the launcher, not by the rank
    for sock in socks:
        sock.close()


# --- configuration errors: one line, exit 2, no traceback ----------------------------------

BAD_HOSTFILES = {
    "not-json": ('{"hosts": [', r"not valid JSON: .*\(line 1, column 12\)"),
    "missing-hosts": ('{"envs": ["A=1"]}', r'missing "hosts"'),
    "hosts-not-list": ('{"hosts": "localhost"}', r"hosts: expected a list of host objects, got a string"),
    "slots-type": ('{"hosts": [{}, {"slots": "two"}]}', r'hosts\[1\]\.slots: expected a positive integer, got "two"'),
    "ips-type": ('[{"ips": "127.0.0.1"}]', r"\[0\]\.ips: expected a list of IP addresses"),
    "empty-list": ('{"hosts": []}', r"hosts: empty list"),
    "bad-ip": ('[{"ips": ["127.0.0.999"]}]', r"\[0\]\.ips\[0\]: expected an IP address"),
    "bad-env": ('{"hosts": [{}], "envs": ["NO PE"]}', r'envs\[0\]: expected "NAME=value"'),
}


@pytest.mark.parametrize("kind", sorted(BAD_HOSTFILES))
def test_malformed_hostfile_is_one_line_and_exit_2(tmp_path, kind):
    text, message = BAD_HOSTFILES[kind]
    path = tmp_path / f"{kind}.json"
    path.write_text(text)
    result = run_launcher(["--hosts", str(path), RANK_ENV])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ringdist-launch: error: {path}: ")
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0", "s.py"], "argument -n/--nprocs: expected a positive integer"),
        (["--timeout", "soon", "s.py"], "argument --timeout: expected a number of seconds"),
        (["--grace", "-1", "s.py"], "argument --grace: expected a number of seconds >= 0"),
        (["--bogus", "s.py"], "unrecognized arguments: --bogus"),
        (["-n", "2"], "no program to run"),
        (["-m"], "argument -m: expected a module name"),
        (["--"], "no command after --"),
        (["--env", "NOEQUALS", "s.py"], '--env: expected "NAME=value", got "NOEQUALS"'),
        (["--env", "RANK=3", "s.py"], "--env: RANK is set by the launcher for each rank"),
        (["--env", "RINGDIST_SOCKET_DIR=/tmp/x", "s.py"], "--env: RINGDIST_SOCKET_DIR is the launcher's own"),
        (["--cwd", "/no/such/dir", "s.py"], "--cwd: no such directory: /no/such/dir"),
        (["--hosts", "/no/such/hosts.json", "s.py"], "/no/such/hosts.json: cannot read hostfile"),
        (["--rendezvous", "127.0.0.1:http", "s.py"], "--rendezvous '127.0.0.1:http': the port must be a number"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args, message):
    result = run_launcher(args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("ringdist-launch: error: ") and message in last, result.stderr


def test_readme_synopsis_lists_every_option():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## ringdist-launch\n", 1)[1].split("\n## ", 1)[0]
    synopsis = section.split("```")[1]
    for action in _parser()._actions:
        if action.option_strings and action.dest != "_module":  # -m module is the program
            assert any(re.search(rf"\[{re.escape(o)}[\] ]", synopsis) for o in action.option_strings), action


def test_help_exits_0():
    result = run_launcher(["--help"])
    assert result.returncode == 0 and "ringdist-launch [options]" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_ranks_die_with_a_sigkilled_launcher():
    proc = start_launcher(["-n", "2", EXIT_CODE, "-1", "0", "60"])
    pids: list[int] = []
    try:
        pids = [int(m.group(1)) for m in LineReader(proc.stdout).wait_for(r"pid (\d+)", 2)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until_gone(pids, timeout=5) == []
    finally:
        kill_tree(proc)
        for pid in pids:  # orphans escape kill_tree once their launcher is gone
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_where_ranks_are_reaped_as_they_exit_what_they_left_in_their_group_is_killed_then(monkeypatch):
    # Off Linux (macOS: no waitid that leaves a process unreaped) the launcher reaps a rank as it
    # exits, and its group's id is no longer only the rank's to signal at the end: a child the
    # rank left running (the job ended 0) outlived the job. Linux's path (`finish`) is covered by
    # the launcher tests; this runs the other one here.
    from ringdist_launch import spawn

    monkeypatch.setattr(spawn.sys, "platform", "darwin")
    rank = spawn.LocalSpawner().start(["sh", "-c", "sleep 60 & echo $!; exit 3"], {}, None)
    child = int(rank.proc.stdout.readline())
    try:
        assert rank.wait_exit() == 3
        assert wait_until_gone([child], 10) == [], "the rank's child outlived it"
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rank.proc.stdout.close()
        rank.proc.stderr.close()


def test_value_options_table_matches_the_parser():
    """The program-start scan must know every option that takes a separate value."""
    from ringdist_launch.cli import _VALUE_OPTIONS

    parser = _parser()
    for flag in _VALUE_OPTIONS:
        _, target = parse([flag, "A=1" if flag == "--env" else "1", "s.py"])
        assert target.name == "s.py", flag
    helptext = parser.format_help()
    for flag in re.findall(r"(--?[\w-]+) [A-Z]", helptext):
        assert flag in _VALUE_OPTIONS or flag == "-m", flag


def test_a_remote_rank_whose_agent_fails_on_its_own_during_the_stop_is_not_said_stopped(tmp_path):
    # rdtest-a cannot be reached (once rdtest-b's agent ignores SIGTERM); rdtest-b neither, a moment later.
    ready = tmp_path / "b-ignores-term"
    agent = tmp_path / "agent.sh"
    agent.write_text(f"""#!/bin/sh
if [ "$1" = rdtest-a ]; then
    i=0; while [ ! -e {ready} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    echo "no route to $1" >&2; exit 255
fi
trap "" TERM
touch {ready}
sleep 1
echo "no route to $1" >&2
exit 255
""")
    agent.chmod(0o755)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"hosts": [{"ssh": "rdtest-a", "ips": ["127.0.0.1"]},
                                              {"ssh": "rdtest-b", "ips": ["127.0.0.1"]}]}))
    result = run_launcher(["--rsh-agent", str(agent), "--rendezvous", "127.0.0.1", "--hosts", str(hostfile),
                           "--grace", "20", "--", PY, "-c", "pass"], timeout=60)
    assert result.returncode == 255, result.stderr
    assert launcher_lines(result.stderr)[-1] == (
        f"ringdist-launch: cannot start rank 0 on host rdtest-a: {agent} exited with code 255 before the rank "
        "started: no route to rdtest-a; rank 1 could not be started either"), result.stderr


def test_policy_after_output_a_gone_reader_is_sigpipe_and_lost_output_no_success():
    pipe = Outcome(128 + signal.SIGPIPE, signal.SIGPIPE)
    assert after_output(Outcome(0), lost=False, gone=True) == pipe
    assert after_output(Outcome(3), lost=True, gone=True) == pipe  # (the reader left: as `seq 9 | head -1`)
    assert after_output(Outcome(0), lost=True, gone=False) == Outcome(1)
    assert after_output(Outcome(3), lost=True, gone=False) == Outcome(3)  # a failed rank's status stays
    killed = Outcome(130, signal.SIGINT)
    assert after_output(killed, lost=True, gone=True) == killed  # (dying of its own signal already)
    assert after_output(Outcome(0), lost=False, gone=False) == Outcome(0)
