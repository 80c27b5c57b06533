"""The emulated cluster (tools/netns-cluster): 4 network namespaces, one rank each, launched with
`--rsh-agent "ip netns exec"`, in both topologies, with and without per-link limits."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import uuid

import pytest

from helpers import ROOT, SCRIPTS, require, run_launcher

TOOL = ROOT / "tools" / "netns-cluster"
FAST = {"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "15"}
AGENT = "ip netns exec"


def _can_make_namespaces() -> str | None:
    """None if this machine can build the cluster, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2 ({tool} not found)"
    return None


def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, f"netns-cluster {' '.join(args)}: {res.stderr}"
    return res


def unique_name(tag: str) -> str:
    """Unique per test run and xdist worker, so parallel tests (and parallel test runs) never collide."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    return f"rdt-{worker}-{tag}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def netns_cluster(tmp_path):
    """Builds clusters on demand and tears every one of them down afterwards, whatever happened."""
    problem = _can_make_namespaces()
    require(problem is None, problem or "")
    require(shutil.which("nft") is not None, "needs nftables (nft) for packet loss")
    names = []

    def up(tag: str, *options: str) -> tuple[str, str, dict]:
        """Cluster NAME (unique), the path of its hostfile, and the hostfile's contents."""
        name = unique_name(tag)
        names.append(name)
        hostfile = tmp_path / f"{name}.json"
        tool("up", name, "--hostfile", str(hostfile), *options)
        return name, str(hostfile), json.loads(hostfile.read_text())

    yield up
    for name in names:
        tool("down", name, check=False)


def namespace_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_tx_bytes(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", dev], capture_output=True, text=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["bytes"]


def reports(stdout: str) -> dict[int, dict]:
    return {int(m.group(1)): json.loads(m.group(2)) for m in re.finditer(r"^\[(\d)\] (\{.*\})$", stdout, re.M)}


@pytest.mark.parametrize("topology, limits", [
    ("switched", ()),
    ("ring", ()),
    ("switched", ("--rate", "1gbit")),
    ("ring", ("--rate", "1gbit", "--loss", "1")),
], ids=["switched", "ring", "switched-1gbit", "ring-1gbit-loss1"])
def test_collectives_on_the_emulated_cluster(netns_cluster, topology, limits):
    name, path, hostfile = netns_cluster(topology[:4], "-k", "4", "--topology", topology, *limits)
    hosts = hostfile["hosts"]
    assert [h["ssh"] for h in hosts] == [f"{name}-h{i}" for i in range(4)]
    big = 2 << 20  # 8 MiB of float32 per rank through the ring
    res = run_launcher(["--rsh-agent", AGENT, "--hosts", path, "-v",
                        str(SCRIPTS / "world_check.py"), str(big)], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    got = reports(res.stdout)
    assert sorted(got) == [0, 1, 2, 3]
    for r, rep in got.items():
        assert rep["size"] == 4 and rep["source"] == "ringdist-launch"
        assert rep["addresses"] == hosts[r]["ips"]  # each rank listens on every address of its host
        assert rep["split"] == ([3, 1] if r % 2 else [2, 0])
    mgmt = hosts[0]["ips"][-1].rsplit(".", 1)[0]
    assert f"rendezvous listening at {mgmt}.254:" in res.stderr  # the launcher's side of the bridge
    if topology == "ring":
        # Ring neighbours are wired directly: each host's first address is on the cable from its left
        # neighbour, and the world's bulk traffic went over the cables.
        for i, h in enumerate(hosts):
            assert _same_30(h["ips"][0], hosts[(i - 1) % 4]["ips"][1])  # my left end, my left neighbour's right
            assert link_tx_bytes(h["ssh"], "right") > big * 4 // 2
    assert all(not _pids_in(h["ssh"]) for h in hosts)


def test_rank_failure_in_a_namespace_leaves_nothing_behind(netns_cluster):
    name, path, hostfile = netns_cluster("fail", "-k", "3", "--topology", "switched")
    res = run_launcher(["--rsh-agent", AGENT, "--hosts", path, "--grace", "1",
                        str(SCRIPTS / "fail_after_init.py"), "2", "5", "60"], timeout=60, env=FAST)
    assert res.returncode == 5, res.stderr
    pids = dict(re.findall(r"^\[(\d)\] pid (\d+)$", res.stdout, re.M))
    assert f"rank 2 (host {name}-h2, pid {pids['2']}) exited with code 5 first; stopping ranks 0,1" in res.stderr
    assert all(not _pids_in(h["ssh"]) for h in hostfile["hosts"])


def test_clusters_side_by_side_and_idempotent_teardown(netns_cluster):
    results: dict[str, tuple[str, dict]] = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, netns_cluster(t, "-k", "2", *o)))
               for t, o in (("a", ("--topology", "ring")), ("b", ("--topology", "switched")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    (a, _, file_a), (b, _, file_b) = results["a"], results["b"]
    assert file_a["hosts"][0]["ips"][-1].rsplit(".", 1)[0] != file_b["hosts"][0]["ips"][-1].rsplit(".", 1)[0]
    assert {f"{a}-h0", f"{a}-h1", f"{a}-sw", f"{b}-h0", f"{b}-h1", f"{b}-sw"} <= namespace_names()
    # This machine's end of each cluster's management link, and the routes through it. (Not the
    # subnets: once a cluster is down, a cluster of a test running beside this one may take its subnet.)
    ends = {t: "rdn" + hashlib.sha1(t.encode()).hexdigest()[:10] for t in (a, b)}
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for t, hostfile in ((a, file_a), (b, file_b)):
        subnet = hostfile["hosts"][0]["ips"][-1].rsplit(".", 1)[0] + "."
        assert f"{subnet}0/24 dev {ends[t]} " in routes, routes
    tool("down", a)
    tool("down", a)  # twice: nothing left to do, still fine
    assert not any(ns.startswith(a + "-") for ns in namespace_names())
    assert {f"{b}-h0", f"{b}-h1"} <= namespace_names()  # the other cluster is untouched
    tool("down", b)
    assert not any(ns.startswith((a + "-", b + "-")) for ns in namespace_names())
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for end in ends.values():
        assert f"dev {end} " not in routes and f" {end}:" not in links and f" {end}@" not in links, (routes, links)


def _same_30(a: str, b: str) -> bool:
    ia = [int(x) for x in a.split(".")]
    ib = [int(x) for x in b.split(".")]
    return ia[:3] == ib[:3] and ia[3] // 4 == ib[3] // 4


def _pids_in(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
