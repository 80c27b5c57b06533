"""Faults on the emulated cluster (tools/netns-cluster): a link taken down in the middle of a
collective turns into an error on every rank, never a hang; 1% packet loss on every link still
gives correct results, and the slowdown it costs is measured against the same cluster without loss."""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import time

import pytest

from helpers import SCRIPTS, LineReader, kill_tree, run_launcher, start_launcher
from test_cluster import AGENT, netns_cluster  # noqa: F401  (netns_cluster is a fixture)

TIMEOUT = 5.0  # RINGDIST_TIMEOUT for the link-down test: the library's progress-based timeout
SLACK = 5.0  # every rank raises within TIMEOUT + SLACK s of the link going down
GRACE = 30.0  # the launcher's SIGTERM-to-SIGKILL grace: long enough that every rank's error is its own
HOSTS = 4


def _pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _left_running(namespaces: list[str], timeout: float = 10.0) -> dict[str, list[int]]:
    """The processes still in `namespaces` after up to `timeout` s (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {ns: pids for ns in namespaces if (pids := _pids_in(ns))}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _set_link(ns: str, dev: str, state: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "set", dev, state], check=True, capture_output=True, timeout=10)


@pytest.mark.parametrize("op,topology", [("all_gather", "ring"), pytest.param("all_sum", "ring", marks=pytest.mark.slow),
                                         pytest.param("all_gather", "switched", marks=pytest.mark.slow),
                                         pytest.param("all_sum", "switched", marks=pytest.mark.slow)])
def test_a_link_taken_down_mid_collective_is_an_error_on_every_rank(netns_cluster, topology, op):
    name, path, _ = netns_cluster(f"ld{topology[0]}", "-k", str(HOSTS), "--topology", topology)
    namespaces = [f"{name}-h{i}" for i in range(HOSTS)] + [f"{name}-sw"]
    # Rank r runs on host r. Ring: the cable from host 1's `right` to host 2's `left` carries the
    # world ring's link between ranks 1 and 2. Switched: host 1's only interface, so rank 1 is cut
    # off from everyone (and the others from it).
    cut_ns, cut_dev = (f"{name}-h1", "right") if topology == "ring" else (f"{name}-h1", "eth0")
    proc = start_launcher(["--rsh-agent", AGENT, "--hosts", path, "--grace", f"{GRACE:g}",
                           str(SCRIPTS / "long_loop.py"), op, "8"],
                          env={"RINGDIST_TIMEOUT": f"{TIMEOUT:g}", "RINGDIST_CONNECT_TIMEOUT": "15"})
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for(r"^\[(\d+)\] ready pid=\d+$", count=HOSTS, timeout=60)
        time.sleep(random.uniform(0.0, 0.3))  # somewhere inside one of the 8 MiB collectives
        down_at = time.time()
        _set_link(cut_ns, cut_dev, "down")
        # Far more than the bound, so a rank that hangs shows up as a wrong time, not just a timeout.
        found = out.wait_for(r"^\[(\d+)\] raised (\w+) at ([\d.]+): (.*)$", count=HOSTS,
                             timeout=TIMEOUT + SLACK + 15)
        returncode = proc.wait(timeout=GRACE + 15)
        stdout, stderr = out.rest(), err.rest()
        left = _left_running(namespaces)
    finally:
        kill_tree(proc)
    raised = {int(m.group(1)): (m.group(2), float(m.group(3)) - down_at, m.group(4)) for m in found}
    summary = ", ".join(f"rank {r} {kind} after {t:.2f} s" for r, (kind, t, _) in sorted(raised.items()))
    print(f"link down ({topology}, {cut_ns.rsplit('-', 1)[1]} {cut_dev}) in {op} 8 MiB x{HOSTS}, "
          f"RINGDIST_TIMEOUT={TIMEOUT:g}: {summary}")
    assert sorted(raised) == list(range(HOSTS)), stdout + stderr
    for rank, (kind, took, message) in raised.items():
        assert kind in ("RingTimeoutError", "PeerLostError"), (rank, kind, message)
        assert message.startswith(f"rank {rank}: {op} "), (rank, message)
        assert 0 < took < TIMEOUT + SLACK, (rank, took, message)
    # Someone detected the cut on their own; every ABORT passed on names such a rank as its origin.
    own = {r for r, (_, _, message) in raised.items() if "aborted by rank" not in message}
    assert own, raised
    for rank, (_, _, message) in raised.items():
        origin = re.match(rf"rank {rank}: {op} aborted by rank (\d+): ", message)
        assert origin is None or int(origin.group(1)) in own, (rank, message)
    assert returncode != 0, stderr
    named = re.search(r"rank (\d) \(host [\w.-]+, pid \d+\) exited with code 1 first", stderr)
    assert named, stderr
    # The job's cause is a rank that detected the cut, not one that only passed its ABORT on (and
    # left first, while the detector spent up to a second sending it over the dead link).
    assert int(named.group(1)) in own, (stderr, raised)
    assert not left, f"still running after the job: {left}"


@pytest.mark.slow
def test_a_slow_link_that_keeps_moving_is_no_stall(netns_cluster):
    # Host 1's link shaped to 2 Mbit/s with a deep queue (no drops): rank 1's ring send of 3 MiB
    # takes about 12 s, and a full send buffer drains for longer than the 2 s timeout with no write
    # of its own getting through. The timeout is for a peer that stalls: the kernel's unsent bytes
    # going down while the buffer is full count as progress (they did not: "made no progress").
    name, path, _ = netns_cluster("slow", "-k", str(HOSTS))
    subprocess.run(["ip", "netns", "exec", f"{name}-h1", "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                    "rate", "2mbit", "burst", "32kb", "limit", "16mb"], check=True, capture_output=True, timeout=10)
    for op, mib in (("all_gather", "1"), ("isend", "3")):  # (isend: rank 1's on the progress thread's loop)
        res = run_launcher(["--rsh-agent", AGENT, "--hosts", path, str(SCRIPTS / "one_checked_call.py"), op, mib],
                           timeout=90, env={"RINGDIST_TIMEOUT": "2", "RINGDIST_CONNECT_TIMEOUT": "15",
                                            "RINGDIST_ALGO": "all_gather:ring"})
        assert res.returncode == 0, (op, res.stdout + res.stderr)
        took = sorted(float(t) for t in re.findall(r"^\[\d\] ok after ([\d.]+) s$", res.stdout, re.M))
        assert len(took) == HOSTS and took[-1] > 4, (op, res.stdout)  # (slower than the timeout twice over)


def _tcp_retransmissions(ns: str) -> int:
    """Segments TCP retransmitted in namespace `ns` since it was made (/proc/net/snmp is per namespace)."""
    lines = [line.split() for line in subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True,
        timeout=10).stdout.splitlines() if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


@pytest.mark.slow
def test_one_percent_loss_on_every_link_gives_correct_results(netns_cluster):
    mib, repeats, rounds = 16, 5, 2
    clusters = {}
    for loss in (0, 1):
        options = ["-k", str(HOSTS), "--topology", "ring", "--rate", "1gbit"]
        name, path, _ = netns_cluster(f"loss{loss}", *options, *(["--loss", str(loss)] if loss else []))
        clusters[loss] = (name, path)
    times: dict[int, dict[str, list[float]]] = {0: {}, 1: {}}
    # Alternate the two clusters, so whatever else loads the machine meanwhile weighs on both alike.
    for _ in range(rounds):
        for loss, (name, path) in clusters.items():
            res = run_launcher(["--rsh-agent", AGENT, "--hosts", path,
                                str(SCRIPTS / "timed_collectives.py"), str(mib), str(repeats)],
                               timeout=60, env={"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "15"})
            # Every rank checks every result of every run (exit non-zero on a wrong element).
            assert res.returncode == 0, (loss, res.stdout + res.stderr)
            report = json.loads(re.search(r"^\[0\] (\{.*\})$", res.stdout, re.M).group(1))
            assert report["ranks"] == HOSTS
            for op in ("all_gather", "all_sum"):
                assert len(report[op]) == repeats
                times[loss].setdefault(op, []).extend(report[op])
    retransmitted = {loss: sum(_tcp_retransmissions(f"{name}-h{i}") for i in range(HOSTS))
                     for loss, (name, _) in clusters.items()}
    assert retransmitted[1] > 0, retransmitted  # the loss was real: TCP had to resend
    for op in ("all_gather", "all_sum"):
        lossy, clean = statistics.median(times[1][op]), statistics.median(times[0][op])
        print(f"loss 1%: {op} {mib} MiB x{HOSTS}: {lossy:.2f} s vs {clean:.2f} s without loss "
              f"({lossy / clean:.2f}x), ring, 1 Gbit/s links, median of {rounds * repeats}")
    print(f"TCP segments retransmitted: {retransmitted[1]} with loss, {retransmitted[0]} without")
