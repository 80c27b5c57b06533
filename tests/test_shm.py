"""Shared memory between ranks on one machine: the link, its algorithms, its fallback, its failures."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist import tuning, wire
from ringdist.shm import slot_bytes

from harness import run_ranks
from helpers import SCRIPTS, LineReader, kill_tree, run_launcher, start_launcher, wait_until_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared-memory link is Linux's")
SHM = (("*", "shm"),)
REDUCERS = {"all_sum": np.add, "all_max": np.maximum, "all_min": np.minimum, "all_prod": np.multiply}


def _input(r: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(r)
    if dtype == "bool":
        return rng.random(count) < 0.5
    return (rng.standard_normal(count) * 100).astype(dtype) if dtype[0] in "fc" else rng.integers(-9, 9, count).astype(dtype)


@pytest.mark.parametrize("n", range(1, 10))
def test_forced_shm_matches_numpy_bit_for_bit_at_every_size(n):
    # Counts: empty, one, uneven blocks, and more than a slot (several rounds) at N = 2.
    big = slot_bytes(max(n, 2)) // 4 + 1001
    cases = [("all_gather", "float32", 0), ("all_gather", "float32", 7), ("all_gather", "int16", 4097),
             ("all_gather", "float32", big), ("all_sum", "float32", 0), ("all_sum", "float64", 1),
             ("all_sum", "float32", 3001), ("all_sum", "float32", big), ("all_max", "int64", 1000),
             ("all_min", "float16", 501), ("all_prod", "int32", 77), ("all_sum", "bool", 33),
             ("all_sum", "complex64", 9), ("broadcast", "float64", 0), ("broadcast", "float32", big),
             ("sum_scatter", "float32", 5 * n), ("sum_scatter", "int32", big // n * n),
             ("all_gather-strided", "float32", 2001), ("all_sum-strided", "float64", 2001)]

    def rank(g: rd.Group) -> list:
        if 2 <= n <= 8:
            assert g.shm is not None
        out = []
        for op, dtype, count in cases:
            strided = op.endswith("-strided")
            op = op.removesuffix("-strided")
            x = _input(g.rank(), 2 * count, dtype)[::2] if strided else _input(g.rank(), count, dtype)
            try:
                out.append(rd.broadcast(x, root=n - 1, group=g) if op == "broadcast" else getattr(rd, op)(x, group=g))
            except rd.ConfigError as exc:
                out.append(exc)
        return out

    results = run_ranks(n, rank, algo=SHM)
    for i, (op, dtype, count) in enumerate(cases):
        strided = op.endswith("-strided")
        op = op.removesuffix("-strided")
        got = [results[r][i] for r in range(n)]
        if n > 8:  # no mesh, no link: every rank refuses alike
            assert all(isinstance(e, rd.ConfigError) and "needs shared memory" in str(e) for e in got), got
            continue
        inputs = [_input(r, 2 * count, dtype)[::2] if strided else _input(r, count, dtype) for r in range(n)]
        if op == "all_gather":
            want = [np.concatenate(inputs)] * n
        elif op == "broadcast":
            want = [inputs[-1]] * n
        else:
            acc = inputs[0].copy()
            for x in inputs[1:]:  # rank order, as the direct and two-shot paths reduce
                (np.add if op == "sum_scatter" else REDUCERS[op])(acc, x, out=acc)
            want = [acc[r * (count // n):(r + 1) * (count // n)] for r in range(n)] if op == "sum_scatter" else [acc] * n
        for r in range(n):
            assert got[r].dtype == want[r].dtype and got[r].tobytes() == want[r].tobytes(), (op, dtype, count, r)


def test_the_table_uses_shared_memory_from_its_threshold_and_rings_close():
    def choices(g: rd.Group) -> list:
        return [tuning.choose(g, op, nbytes).name for op, nbytes in
                [("all_gather", 4096), ("all_gather", tuning.SHM_GATHER_MIN), ("all_sum", 16 << 20),
                 ("sum_scatter", 1 << 20), ("broadcast", 4 << 20)]]
    assert run_ranks(4, choices)[0] == ["doubling", "shm", "shm", "shm", "shm"]
    assert run_ranks(4, choices, shm=False)[0] == ["doubling", "direct", "ring", "ring", "ring"]
    assert "shm" not in run_ranks(9, choices)[0]  # no mesh: no link


def test_ringdist_shm_is_read_and_checked():
    from ringdist.settings import Settings
    assert Settings.from_env({"RINGDIST_SHM": "0"}).shm is False
    assert Settings.from_env({}).shm is True
    with pytest.raises(rd.ConfigError, match="RINGDIST_SHM='yes' must be 0"):
        Settings.from_env({"RINGDIST_SHM": "yes"})


def test_a_stranger_on_the_local_socket_gets_no_memory():
    def rank(g: rd.Group):
        if g.rank() == 0:
            ep = g.endpoint
            refused = ep.refused
            for attempt in (b"garbage" * 20, None):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect("\0" + ep.local_name)
                if attempt is None:  # a well-formed HELLO under the wrong secret
                    hello = wire.make_hello(wire.job_id(b"wrong secret"), g.gid, 1, "shm", 0, os.urandom(wire.NONCE_SIZE))
                    attempt = wire.encode_map(wire.HELLO, hello)
                s.sendall(attempt)
                got_fds = []
                try:
                    while True:
                        data, fds, _, _ = socket.recv_fds(s, 4096, 4)
                        got_fds += fds
                        if not data:
                            break
                except (ConnectionResetError, TimeoutError):
                    pass
                s.close()
                assert got_fds == []
            deadline = time.monotonic() + 5
            while ep.refused < refused + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ep.refused >= refused + 2
        rd.barrier(group=g)
        return float(rd.all_sum(np.ones(1 << 17, np.float32), group=g)[0])  # the job goes on, over shm
    assert run_ranks(2, rank) == [2.0, 2.0]


def test_one_rank_with_shm_off_makes_the_whole_group_use_tcp():
    res = run_launcher(["-n", "3", str(SCRIPTS / "shm_mixed.py"), "rank1-off"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(re.findall(r"^\[(\d)\] shm=False$", res.stdout, re.M)) == ["0", "1", "2"], res.stdout
    assert len(re.findall(r"sum ok", res.stdout)) == 3
    res = run_launcher(["-n", "3", str(SCRIPTS / "shm_mixed.py"), "all-on"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d\] shm=True$", res.stdout, re.M)) == 3, res.stdout


def test_descriptors_and_mappings_stay_flat_over_5000_calls():
    res = run_launcher(["-n", "2", str(SCRIPTS / "shm_fds.py"), "5000"], timeout=120,
                       env={"RINGDIST_ALGO": "*:shm"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d\] shm=True$", res.stdout, re.M)) == 2, res.stdout
    fds = re.findall(r"^\[\d\] fds (\d+) (\d+)$", res.stdout, re.M)
    maps = re.findall(r"^\[\d\] maps (\d+) (\d+)$", res.stdout, re.M)
    assert len(fds) == 2 and all(a == b for a, b in fds), fds
    assert len(maps) == 2 and all(a == b == "2" for a, b in maps), maps  # its own segment and its peer's


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_kill_9_mid_operation_over_shared_memory_reaches_every_rank_and_leaves_nothing():
    before = _dev_shm()
    proc = start_launcher(["-n", "3", "--grace", "10", str(SCRIPTS / "long_loop.py"), "all_gather", "4"],
                          env={"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "*:shm"})
    try:
        out = LineReader(proc.stdout)
        found = out.wait_for(r"^\[(\d+)\] ready pid=(\d+)$", count=3, timeout=60)
        pids = {int(m.group(1)): int(m.group(2)) for m in found}
        with open(f"/proc/{pids[0]}/maps") as f:
            assert sum("memfd:ringdist" in line for line in f) == 3  # every rank's segment, mapped
        time.sleep(0.2)
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=30)
        text = out.rest()
    finally:
        kill_tree(proc)
    raised = {int(r): float(t) for r, t in re.findall(r"^\[(\d+)\] raised \w+ at ([\d.]+):", text, re.M)}
    assert sorted(raised) == [0, 2], text
    assert all(t - killed_at < 5.0 for t in raised.values()), raised
    assert not wait_until_gone(list(pids.values()), timeout=10)
    assert _dev_shm() <= before  # nothing named was ever made
