"""ringdist-launch over real ssh: an OpenSSH server on loopback (started by .ci/run, or by this module
with tools/test-sshd), "hosts" 127.0.0.2 and 127.0.0.3 reached through it by ssh_config aliases
(a loopback address written as such would be started locally)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, SCRIPTS, LineReader, kill_tree, pid_alive, require, run_launcher, start_launcher, wait_until_gone

TEST_SSHD = ROOT / "tools" / "test-sshd"
FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "15"}
HEX_SECRET = re.compile(r"[0-9a-f]{64}")


def _answers(sshd_dir: Path) -> bool:
    config = sshd_dir / "ssh_config"
    if not config.is_file():
        return False
    probe = subprocess.run(["ssh", "-F", str(config), "-o", "ConnectTimeout=5", "127.0.0.2", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """The directory of a running test sshd: $RINGDIST_TEST_SSHD (CI), else one started for this module."""
    require(shutil.which("ssh") is not None, "no ssh client (apt-get install openssh-client)")
    given = os.environ.get("RINGDIST_TEST_SSHD")
    if given and _answers(Path(given)):
        yield Path(given)
        return
    require(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(),
            f"no sshd reachable (RINGDIST_TEST_SSHD={given!r}) and none installed to start "
            "(apt-get install openssh-server; .ci/run starts one)")
    own = tmp_path_factory.mktemp("sshd")
    started = subprocess.run([str(TEST_SSHD), "start", str(own)], capture_output=True, text=True, timeout=60)
    try:
        require(started.returncode == 0 and _answers(own), f"could not start a test sshd: {started.stderr.strip()}")
        yield own
    finally:
        subprocess.run([str(TEST_SSHD), "stop", str(own)], capture_output=True, timeout=30)


@pytest.fixture
def cluster(sshd, tmp_path):
    """An ssh_config with host aliases, and a helper writing hostfiles that use them."""
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Include {sshd / 'ssh_config'}\n"
        "Host rdtest-a\n    HostName 127.0.0.2\n"
        "Host rdtest-b\n    HostName 127.0.0.3\n"
        "Host rdtest-down\n    HostName 127.0.0.9\n"  # nothing listens there
    )

    class Cluster:
        agent = f"ssh -F {shlex.quote(str(config))}"
        path = config

        @staticmethod
        def hostfile(hosts: list[dict]) -> str:
            path = tmp_path / f"hosts-{uuid.uuid4().hex[:6]}.json"
            path.write_text(json.dumps({"hosts": hosts}))
            return str(path)

    return Cluster


TWO_REMOTE = [{"ssh": "rdtest-a", "ips": ["127.0.0.2"]}, {"ssh": "rdtest-b", "ips": ["127.0.0.3"]}]


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker` (ssh clients, sshd, keepers, ranks)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "cmdline").read_bytes() and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def wait_none_with(marker: str, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_gather_over_ssh(cluster):
    # rdtest-b has no `ips`: its rank listens on its address on the route to the rendezvous.
    hosts = [{"ssh": "rdtest-a", "ips": ["127.0.0.2"], "slots": 2}, {"ssh": "rdtest-b"}, {"ips": ["127.0.0.1"]}]
    res = run_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(hosts), "-v",
                        str(SCRIPTS / "gather_matrix.py"), str(4 << 20)], timeout=90, env=FAST)
    assert res.returncode == 0, res.stderr
    oks = re.findall(r"^\[(\d)\] gather ok rank=(\d) size=4 cases=\d+$", res.stdout, re.M)
    assert sorted(oks) == [(str(r), str(r)) for r in range(4)], res.stdout
    assert "rendezvous listening at 127.0.0.1:" in res.stderr  # the route to 127.0.0.2 starts at 127.0.0.1
    assert "RINGDIST-REMOTE" not in res.stdout + res.stderr  # the keeper's reports are consumed


def test_no_connect_limit_over_ssh(cluster):
    """RINGDIST_CONNECT_TIMEOUT=inf ("no limit") reaches remote hosts too: the launcher waits for the
    agent's answer without a limit of its own."""
    res = run_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(TWO_REMOTE),
                        str(SCRIPTS / "gather_matrix.py"), "4096"], timeout=90,
                       env={"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "inf"})
    assert res.returncode == 0, res.stderr
    assert sorted(re.findall(r"^\[(\d)\] gather ok", res.stdout, re.M)) == ["0", "1"], res.stdout


def test_environment_arguments_cwd_and_no_secret_on_any_command_line(cluster, tmp_path):
    weird = ["two words", "it's", "$HOME", "a;b", "*", ""]
    res = run_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(TWO_REMOTE + [{}]),
                        "--env", "FOO=x y'z", "--cwd", str(tmp_path), str(SCRIPTS / "secret_scan.py"), *weird],
                       timeout=60, env=FAST)
    assert res.returncode == 0, res.stderr
    reports = {int(m.group(1)): json.loads(m.group(2))
               for m in re.finditer(r"^\[(\d)\] (\{.*\})$", res.stdout, re.M)}
    assert sorted(reports) == [0, 1, 2]
    assert len({r["digest"] for r in reports.values()}) == 1 and reports[0]["secret_len"] == 64
    for rank, rep in reports.items():
        assert rep["found"] == [], f"the secret is on a command line: {rep['found']}"
        assert rep["argv"] == weird and rep["env"]["FOO"] == "x y'z"
        assert os.path.realpath(rep["cwd"]) == os.path.realpath(tmp_path)
        assert rep["env"]["RINGDIST_RANK"] == str(rank)
    assert [reports[r]["env"]["RINGDIST_HOST"] for r in range(3)] == ["rdtest-a", "rdtest-b", "127.0.0.1"]
    assert not HEX_SECRET.search(res.stdout + res.stderr)


def test_rank_failure_over_ssh_leaves_nothing_behind(cluster):
    marker = f"marker-{uuid.uuid4().hex}"
    hosts = [{"ssh": "rdtest-a", "ips": ["127.0.0.2"], "slots": 2}, TWO_REMOTE[1]]
    started = time.monotonic()
    res = run_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(hosts), "--grace", "2",
                        str(SCRIPTS / "fail_after_init.py"), "1", "3", "60", marker], timeout=60, env=FAST)
    assert time.monotonic() - started < 30
    assert res.returncode == 3, res.stderr
    pids = {int(r): int(p) for r, p in re.findall(r"^\[(\d)\] pid (\d+)$", res.stdout, re.M)}
    assert sorted(pids) == [0, 1, 2]
    assert f"rank 1 (host rdtest-a, pid {pids[1]}) exited with code 3 first; stopping ranks 0,2" in res.stderr
    assert "[1] failing with 3" in res.stderr
    assert wait_until_gone(list(pids.values())) == []
    assert wait_none_with(marker) == []


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_launcher_interrupted_or_killed_leaves_nothing_behind(cluster, how):
    marker = f"marker-{uuid.uuid4().hex}"
    proc = start_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(TWO_REMOTE),
                           "--grace", "1", str(SCRIPTS / "sleeper.py"), "60", "--ignore-term", marker], env=FAST)
    try:
        pids = [int(p) for m in LineReader(proc.stdout).wait_for(r"pid (\d+) (\d+)", 2, timeout=30)
                for p in m.groups()]
        assert all(pid_alive(p) for p in pids)
        if how == "SIGINT":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == -signal.SIGINT  # it dies of the signal, once the job is cleaned up
            assert "interrupted by SIGINT; stopping ranks 0,1" in proc.stderr.read()
        else:  # the ssh clients die with the launcher; each keeper sees its stdin end and stops its rank
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert wait_until_gone(pids, timeout=15) == []  # the ranks and their children, on both "hosts"
        assert wait_none_with(marker) == []
    finally:
        kill_tree(proc)
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_unreachable_host_is_named_quickly(cluster):
    hosts = [TWO_REMOTE[0], {"ssh": "rdtest-down", "ips": ["127.0.0.9"]}]
    started = time.monotonic()
    res = run_launcher(["--rsh-agent", cluster.agent, "--hosts", cluster.hostfile(hosts),
                        str(SCRIPTS / "sleeper.py"), "60"], timeout=60, env=FAST)
    assert time.monotonic() - started < 20
    assert res.returncode == 255
    lines = [line for line in res.stderr.splitlines() if line.startswith("ringdist-launch:")]
    assert re.fullmatch(r"ringdist-launch: cannot start rank 1 on host rdtest-down: ssh exited with code 255 "
                        r"before the rank started: ssh: connect to host 127\.0\.0\.9 port \d+: "
                        r"Connection refused; stopping rank 0", lines[0]), lines


def test_silent_host_times_out_within_the_connect_timeout(cluster, tmp_path):
    """A host that accepts TCP but never speaks ssh: the launcher gives up after RINGDIST_CONNECT_TIMEOUT."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    config = tmp_path / "silent_config"
    config.write_text(f"Host rdtest-silent\n    HostName 127.0.0.1\n    Port {silent.getsockname()[1]}\n"
                      f"Include {cluster.path}\n")
    hostfile = tmp_path / "silent.json"
    hostfile.write_text(json.dumps([{"ssh": "rdtest-silent", "ips": ["127.0.0.1"]}]))
    started = time.monotonic()
    try:
        res = run_launcher(["--rsh-agent", f"ssh -F {config}", "--hosts", str(hostfile),
                            "--env", "RINGDIST_CONNECT_TIMEOUT=2", str(SCRIPTS / "sleeper.py"), "60"], timeout=60)
    finally:
        silent.close()
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 15
    assert res.returncode == 255
    assert ("ringdist-launch: cannot start rank 0 on host rdtest-silent: no answer through ssh within 2 s "
            "(RINGDIST_CONNECT_TIMEOUT sets the limit)") in res.stderr


# --- the command lines (no sshd needed) -------------------------------------------------------


def test_dry_run_shows_the_quoted_remote_command_without_the_secret(tmp_path):
    hostfile = tmp_path / "h.json"
    hostfile.write_text(json.dumps([{"ssh": "node1", "ips": ["10.213.250.1"]}]))
    res = run_launcher(["--hosts", str(hostfile), "--rendezvous", "10.213.250.254:7777", "--env", "A=b c",
                        "--cwd", str(tmp_path), "--dry-run", "--", "echo", "it's"])
    assert res.returncode == 0, res.stderr
    assert "rendezvous at 10.213.250.254:7777" in res.stdout
    remote = next(line for line in res.stdout.splitlines() if line.startswith("  remote: "))
    argv = shlex.split(remote[len("  remote: "):].split("  (")[0])
    assert argv[:6] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "node1"] and len(argv) == 7
    words = shlex.split(argv[6])  # what the remote shell runs
    assert words[:4] == ["cd", str(tmp_path), "&&", "exec"] and words[4] == "env"
    assert "A=b c" in words and "RINGDIST_RENDEZVOUS=10.213.250.254:7777" in words
    assert not any(w.startswith("RINGDIST_SECRET") for w in words)
    assert words[-3:] == ["5", "echo", "it's"]  # the keeper's grace, then the rank's command
    unlimited = run_launcher(["--hosts", str(hostfile), "--env", "RINGDIST_CONNECT_TIMEOUT=inf", "--dry-run", "--", "true"])
    remote = next(line for line in unlimited.stdout.splitlines() if line.startswith("  remote: "))
    assert shlex.split(remote[len("  remote: "):])[:4] == ["ssh", "-o", "BatchMode=yes", "node1"], unlimited.stderr
    agent = run_launcher(["--hosts", str(hostfile), "--rsh-agent", "ip netns exec", "--dry-run", "--", "true"])
    remote = next(line for line in agent.stdout.splitlines() if line.startswith("  remote: "))
    assert shlex.split(remote[len("  remote: "):].split("  (")[0])[:6] == ["ip", "netns", "exec", "node1", "sh", "-c"]
