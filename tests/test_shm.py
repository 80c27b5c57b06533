"""Shared memory between ranks on one machine: the link, its algorithms, its fallback, its failures."""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist import crossmem, posixshm, shmsignal, tuning, wire
from ringdist.shm import slot_bytes

from harness import run_ranks
from reductions import folded, run_reduction
from helpers import SCRIPTS, assert_strangers_get_no_descriptor, kill_one_mid_loop, run_launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared-memory link is Linux's")
SHM = (("*", "shm"),)


def _input(r: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(r)
    if dtype == "bool":
        return rng.random(count) < 0.5
    return (rng.standard_normal(count) * 100).astype(dtype) if dtype[0] in "fc" else rng.integers(-9, 9, count).astype(dtype)


@pytest.mark.parametrize("n", [*range(1, 10), 12, 16])
def test_forced_shm_matches_numpy_bit_for_bit_at_every_size(n):
    # Counts: empty, one, uneven blocks, and more than a slot (several rounds) at N = 2.
    big = slot_bytes(max(n, 2)) // 4 + 1001
    cases = [("all_gather", "float32", 0), ("all_gather", "float32", 7), ("all_gather", "int16", 4097),
             ("all_gather", "float32", big), ("all_sum", "float32", 0), ("all_sum", "float64", 1),
             ("all_sum", "float32", 3001), ("all_sum", "float32", big), ("all_max", "int64", 1000),
             ("all_min", "float16", 501), ("all_prod", "int32", 77), ("all_sum", "bool", 33),
             ("all_sum", "complex64", 9), ("broadcast", "float64", 0), ("broadcast", "float32", big),
             ("sum_scatter", "float32", 5 * n), ("sum_scatter", "int32", big // n * n),
             ("max_scatter", "float32", big // n * n), ("bxor_scatter", "int16", 5 * n), ("all_bor", "uint32", big),
             ("all_band", "bool", 33), ("all_gather-strided", "float32", 2001), ("all_sum-strided", "float64", 2001)]

    def rank(g: rd.Group) -> list:
        if n >= 2:
            assert g.shm is not None
        out = []
        for op, dtype, count in cases:
            strided = op.endswith("-strided")
            op = op.removesuffix("-strided")
            x = _input(g.rank(), 2 * count, dtype)[::2] if strided else _input(g.rank(), count, dtype)
            try:
                out.append(rd.broadcast(x, root=n - 1, group=g) if op == "broadcast" else run_reduction(op, x, g))
            except rd.ConfigError as exc:
                out.append(exc)
        return out

    results = run_ranks(n, rank, algo=SHM)
    for i, (op, dtype, count) in enumerate(cases):
        strided = op.endswith("-strided")
        op = op.removesuffix("-strided")
        got = [results[r][i] for r in range(n)]
        inputs = [_input(r, 2 * count, dtype)[::2] if strided else _input(r, count, dtype) for r in range(n)]
        if op == "all_gather":
            want = [np.concatenate(inputs)] * n
        elif op == "broadcast":
            want = [inputs[-1]] * n
        else:
            acc = folded(inputs, op)  # rank order, as the direct and two-shot paths reduce
            want = [acc[r * (count // n):(r + 1) * (count // n)] for r in range(n)] if op.endswith("_scatter") else [acc] * n
        for r in range(n):
            assert got[r].dtype == want[r].dtype and got[r].tobytes() == want[r].tobytes(), (op, dtype, count, r)


def test_the_table_uses_shared_memory_from_its_threshold_and_rings_close():
    def choices(g: rd.Group) -> list:
        return [tuning.choose(g, op, nbytes).name for op, nbytes in
                [("all_gather", 4096), ("all_gather", tuning.SHM_GATHER_MIN), ("all_sum", 16 << 20),
                 ("sum_scatter", 1 << 20), ("broadcast", 4 << 20)]]
    # Rounds signalled over TCP: shared memory from its threshold; through the segments
    # (`shmsignal`, where the machine has them): from the first byte.
    assert run_ranks(4, choices, shm_signals=False)[0] == ["doubling", "shm", "shm", "shm", "shm"]
    if shmsignal.supported():
        assert run_ranks(4, choices, shm_cma=False)[0] == ["shm", "shm", "shm", "shm", "shm"]
        if crossmem.supported():  # a large reduction and broadcast read from the peers' memory
            assert run_ranks(4, choices)[0] == ["shm", "shm", "shm-cma", "shm", "shm-cma"]
    assert run_ranks(4, choices, shm=False)[0] == ["doubling", "direct", "ring", "ring", "ring"]
    # More than 8 ranks: the link all the same; the table gathers over it (measured faster
    # at 16 ranks) but reduces over TCP (measured slower).
    wide = run_ranks(9, lambda g: (g.shm is not None, choices(g)), shm_signals=False)
    assert wide[0] == (True, ["doubling", "shm", "ring", "rabenseifner", "binomial"])
    if shmsignal.supported():  # signalled through the segments, every row of it
        assert run_ranks(9, choices, shm_cma=False)[0] == ["shm"] * 5
        if crossmem.supported():
            assert run_ranks(9, choices)[0] == ["shm", "shm", "shm-cma", "shm", "shm-cma"]
    assert "shm" not in run_ranks(9, choices, shm=False)[0]


def test_ringdist_shm_is_read_and_checked():
    from ringdist.settings import Settings
    assert Settings.from_env({"RINGDIST_SHM": "0"}).shm is False
    assert Settings.from_env({}).shm is True
    with pytest.raises(rd.ConfigError, match="RINGDIST_SHM='yes' must be 0"):
        Settings.from_env({"RINGDIST_SHM": "yes"})


def test_a_stranger_on_the_local_socket_gets_no_memory():
    def rank(g: rd.Group):
        if g.rank() == 0:
            assert_strangers_get_no_descriptor(g.endpoint, "\0" + g.endpoint.local_name, g.gid)
        rd.barrier(group=g)
        return float(rd.all_sum(np.ones(1 << 17, np.float32), group=g)[0])  # the job goes on, over shm
    assert run_ranks(2, rank) == [2.0, 2.0]


@pytest.mark.parametrize("n", [3, 10])
def test_one_rank_with_shm_off_makes_the_whole_group_use_tcp(n):
    res = run_launcher(["-n", str(n), str(SCRIPTS / "shm_mixed.py"), "rank1-off"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(map(int, re.findall(r"^\[(\d+)\] shm=False$", res.stdout, re.M))) == list(range(n)), res.stdout
    assert len(re.findall(r"sum ok", res.stdout)) == n
    res = run_launcher(["-n", str(n), str(SCRIPTS / "shm_mixed.py"), "all-on"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d+\] shm=True$", res.stdout, re.M)) == n, res.stdout


@pytest.mark.parametrize("n, failing", [(4, 1), (12, 5), (12, 0)])
def test_a_rank_whose_unix_exchange_fails_sends_the_whole_group_to_tcp(n, failing, monkeypatch):
    # Rank `failing` cannot reach its peers' Unix sockets (as from another network
    # namespace): every rank, the failing one and all the rest, ends up without the link
    # and with the same results over TCP; a forced shm call is refused alike everywhere.
    from ringdist.endpoint import Endpoint
    dial = Endpoint.connect_local

    def connect_local(self, *args, **kwargs):
        return None if self.label == f"rank {failing}" else dial(self, *args, **kwargs)
    monkeypatch.setattr(Endpoint, "connect_local", connect_local)

    def rank(g: rd.Group) -> tuple:
        try:
            rd.all_gather(np.ones(1 << 16, np.float32), group=g)
            refused = None
        except rd.ConfigError as exc:
            refused = str(exc)
        return g.shm is not None, refused, rd.all_sum(np.full(1 << 16, g.rank(), np.int64), group=g)

    results = run_ranks(n, rank, algo=(("all_gather", "shm"),))
    assert [shm for shm, _, _ in results] == [False] * n
    assert all(refused is not None and "needs shared memory" in refused for _, refused, _ in results), results
    assert all((total == n * (n - 1) // 2).all() for _, _, total in results)


@pytest.mark.parametrize("backend", ["auto", "posix"])
def test_a_local_handshake_cut_off_is_dialed_again_and_the_group_keeps_shared_memory(backend, monkeypatch):
    # A peer's acceptor evicts handshakes under a flood of strangers on its Unix socket: the real
    # rank cut off so dials again, as over TCP, rather than send the whole group to TCP.
    from ringdist import endpoint as endpoint_module
    from ringdist.handshake import HandshakeCutOff
    real = endpoint_module.client_handshake
    cut = []

    def client_handshake(sock, secret, hello, deadline, peer):
        if "local socket" in peer and len(cut) < 3:
            cut.append(peer)
            raise HandshakeCutOff("handshake cut off before WELCOME: connection reset")
        return real(sock, secret, hello, deadline, peer)
    monkeypatch.setattr(endpoint_module, "client_handshake", client_handshake)
    results = run_ranks(3, lambda g: (g.shm is not None, rd.all_sum(np.full(4, g.rank()), group=g).tolist()),
                        shm_backend=backend)
    assert len(cut) == 3
    assert results == [(True, [3, 3, 3, 3])] * 3


def test_a_vote_after_the_links_took_the_whole_deadline_still_waits_and_says_for_how_long():
    # A peer that never answers the vote, which is given nothing left of its caller's deadline.
    import threading

    from ringdist import votes
    from ringdist.errors import RingTimeoutError
    stalled = threading.Event()

    def rank(g: rd.Group):
        if g.rank() == 1:
            stalled.wait(10)
            return None
        started = time.monotonic()
        try:
            # The link's setup began 4 s before its vote, which has only what is left of its time:
            # the error says how long the setup waited (it said 1 s, or 29.9969 s of 30).
            votes.vote(g.links, True, -0.03, began=started - 4.0)
        except RingTimeoutError as exc:
            return time.monotonic() - started, str(exc)
        finally:
            stalled.set()

    results = run_ranks(2, rank, shm=False)
    waited, message = results[0]
    assert votes.MIN_WAIT <= waited < votes.MIN_WAIT + 2, waited
    assert re.match(r"rank 0: group setup \(shared memory\) did not finish within 5\.\d s: receiving from rank 1",
                    message), message


def test_a_vote_decided_in_its_grace_leaves_the_steps_after_it_time_to_finish(monkeypatch):
    # Both ranks late to make their segments (2.9 and 3.2 s of a 3 s setup): the vote waits its
    # grace and both say yes, but the steps after it had a deadline already past, and rank 0
    # read its own timeout as "lost rank 1" (PeerLostError) while rank 1 timed out.
    from ringdist import shm as shm_module

    made = shm_module._segment
    late = {"harness-rank-0": 2.9, "harness-rank-1": 3.2}

    def slow_segment(*args, **kwargs):
        time.sleep(late.get(threading.current_thread().name, 0))
        return made(*args, **kwargs)

    monkeypatch.setattr(shm_module, "_segment", slow_segment)
    got = run_ranks(2, lambda g: (g.shm is not None, rd.all_sum(np.ones(3), group=g).tolist()), connect_timeout=3.0,
                    timeout=60)
    assert got == [(True, [2.0, 2.0, 2.0])] * 2, got


@pytest.mark.parametrize("n, calls", [(2, 5000), (16, 300)])
def test_descriptors_and_mappings_stay_flat_over_many_calls(n, calls):
    # 16 ranks: 16 processes on a shared 2-core box, so fewer calls (each a dissemination signal).
    res = run_launcher(["-n", str(n), str(SCRIPTS / "shm_fds.py"), str(calls)], timeout=180,
                       env={"RINGDIST_ALGO": "*:shm"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"^\[\d+\] shm=True$", res.stdout, re.M)) == n, res.stdout
    fds = re.findall(r"^\[\d+\] fds (\d+) (\d+)$", res.stdout, re.M)
    maps = re.findall(r"^\[\d+\] maps (\d+) (\d+)$", res.stdout, re.M)
    assert len(fds) == n and all(a == b for a, b in fds), fds
    assert len(maps) == n and all(a == b == str(n) for a, b in maps), maps  # its own segment and every peer's
    # No descriptor is kept per peer: the memory files were closed once mapped.
    assert all(int(b) < 40 + 3 * n for _, b in fds), fds


def _dev_shm(job: str) -> list[str]:
    """/dev/shm entries named for `job` (what the portable backend would name its segments)."""
    prefix = posixshm.SEGMENT_PREFIX[1:] + job[:8]
    return [e for e in os.listdir("/dev/shm") if e.startswith(prefix)] if os.path.isdir("/dev/shm") else []


def _job_of(pid: int) -> str:
    env = dict(v.split(b"=", 1) for v in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in v)
    return wire.job_id(env[b"RINGDIST_SECRET"])


@pytest.mark.parametrize("n", [3, 9, 12, 16])
def test_kill_9_mid_operation_over_shared_memory_reaches_every_rank_and_leaves_nothing(n):
    # Blocks of 0.5 MiB: more than one slot at 9 ranks and more (several rounds, each signalled).
    mib = "4" if n <= 8 else "0.5"
    jobs = []

    def mapped(pids: dict[int, int]) -> None:
        with open(f"/proc/{pids[0]}/maps") as f:
            assert sum("memfd:ringdist" in line for line in f) == n  # every rank's segment, mapped
        jobs.append(_job_of(pids[0]))
        assert not _dev_shm(jobs[0])  # nothing named: the segments are memfds

    kill_one_mid_loop(["-n", str(n), str(SCRIPTS / "long_loop.py"), "all_gather", mib], n, n // 2,
                      {"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "*:shm"}, on_ready=mapped)
    assert len(jobs) == 1 and not _dev_shm(jobs[0])


@pytest.mark.parametrize("n", [9, 12, 16])
def test_large_groups_over_shm_match_their_tcp_results_bit_for_bit(n):
    # Everything whose bits do not depend on the order of a reduction (TCP's large-group
    # reductions fold in another order than rank order): shm against TCP, bit for bit; float
    # sums against rank order, the bits shm promises, and close to TCP's.
    big = slot_bytes(n) // 4 + 1001  # more than one slot: several rounds
    cases = [("all_gather", "float32", 7), ("all_gather", "float64", big), ("broadcast", "float32", big),
             ("all_sum", "int64", big), ("all_max", "float32", 3001), ("all_min", "int16", big),
             ("all_prod", "int32", 77), ("sum_scatter", "int32", big // n * n), ("all_sum", "bool", 33),
             ("all_sum", "float32", big), ("all_sum", "float64", 3 * n + 1), ("min_scatter", "float64", big // n * n),
             ("band_scatter", "int64", 3 * n), ("all_bxor", "int8", big)]

    def rank(g: rd.Group) -> tuple:
        out = []
        for op, dtype, count in cases:
            x = _input(g.rank(), count, dtype)
            out.append(rd.broadcast(x, root=n - 1, group=g) if op == "broadcast" else run_reduction(op, x, g))
        return g.shm is not None, out

    over_shm = run_ranks(n, rank, algo=SHM)
    over_tcp = run_ranks(n, rank, shm=False)
    assert [s for s, _ in over_shm] == [True] * n and [s for s, _ in over_tcp] == [False] * n
    for i, (op, dtype, count) in enumerate(cases):
        for r in range(n):
            got, tcp = over_shm[r][1][i], over_tcp[r][1][i]
            assert got.dtype == tcp.dtype and got.shape == tcp.shape, (op, dtype, r)
            if op == "all_sum" and dtype.startswith("float"):
                acc = _input(0, count, dtype)
                for q in range(1, n):
                    acc = acc + _input(q, count, dtype)
                assert got.tobytes() == acc.tobytes(), (op, dtype, r)
                np.testing.assert_allclose(got, tcp, rtol=1e-5, atol=1e-3)
            else:
                assert got.tobytes() == tcp.tobytes(), (op, dtype, count, r)


@pytest.mark.parametrize("n", [4, 12])
def test_a_stalled_peer_over_shm_times_out_on_every_other_rank_naming_the_op(n):
    # Rank 1 comes 4 s late to a forced-shm all_gather with a 1 s timeout: every other rank
    # raises a timeout (or the ABORT of a rank that timed out) naming all_gather, well
    # before rank 1 comes; rank 1 then finds the group broken: nobody hangs.
    x = np.ones(1 << 18, np.float32)

    def rank(g: rd.Group) -> tuple:
        assert g.shm is not None
        rd.barrier(group=g)
        if g.rank() == 1:
            time.sleep(4)
        start = time.monotonic()
        try:
            rd.all_gather(x, group=g, timeout=1)
        except rd.RingError as exc:
            return type(exc), str(exc), time.monotonic() - start
        return None, "returned", time.monotonic() - start

    results = run_ranks(n, rank, algo=SHM, timeout=60)
    for r, (kind, text, took) in enumerate(results):
        assert kind is not None, (r, text)
        if r == 1:
            continue
        assert issubclass(kind, (rd.RingTimeoutError, rd.PeerLostError)), (r, kind, text)
        assert "all_gather" in text, (r, text)
        assert took < 3.5, (r, took, text)  # the 1 s timeout, and the ABORT's way round: before rank 1 came
    assert any(issubclass(kind, rd.RingTimeoutError) for kind, _, _ in results), results
    print({r: (kind.__name__, round(took, 2)) for r, (kind, _, took) in enumerate(results)})


@pytest.mark.parametrize("op, algo", [("all_gather", "shm"), ("all_sum", "shm"), ("all_sum", "shm-cma"),
                                      ("reduce", "shm-cma"), ("all_gather_uneven", None),
                                      ("reduce_scatter_counts", None)])
def test_peak_memory_of_a_large_shm_collective_is_its_input_output_and_at_most_16_mib(op, algo):
    # 4 ranks, 64 MiB per rank through the op (all_gather: 16 MiB in, 64 MiB out; all_sum:
    # 64 MiB in and out; reduce: 64 MiB in, out on rank 0 only); each rank measures its peak
    # resident memory (VmHWM, reset before the input is made) over its baseline, and the test
    # prints it. Through the segments, or read from the peers' memory (a piece at a time).
    # algo None: the table's. An uneven all_gather (6.4-25.6 MiB in, 64 out) landed each peer's
    # rows in a buffer of their own and copied them into the result: twice the output. A
    # reduce-scatter with counts (64 MiB in, 6.4-25.6 MiB out) held every rank's block of its rows,
    # N times its output, until it folded them.
    if algo == "shm-cma" and not (crossmem.supported() and shmsignal.supported()):
        pytest.skip("cross-memory reads need Linux's process_vm_readv and signals through memory")
    mib = 16 if op in ("all_gather", "all_gather_uneven") else 64  # per rank in (uneven: on average)
    forced = {"shm": f"*:{algo}", "shm-cma": f"all_reduce:{algo},reduce:{algo}", None: ""}[algo]
    res = run_launcher(["-n", "4", str(SCRIPTS / "memory_peak.py"), str(mib), op, "1"], timeout=120,
                       env={"RINGDIST_ALGO": forced})
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.findall(r"^\[(\d)\] shm=True in=([\d.]+) out=([\d.]+) peak=([\d.]+)$", res.stdout, re.M)
    assert len(found) == 4, res.stdout + res.stderr
    print(res.stdout)
    for r, inp, out, peak in found:
        assert float(peak) <= float(inp) + float(out) + 16, (r, inp, out, peak)


def test_direct_max_0_means_the_ring_with_shared_memory_on():
    # RINGDIST_DIRECT_MAX=0: "always the ring" in groups of 2 to 8, the shared-memory link
    # included: the same choices as with shared memory off (the link stays built:
    # RINGDIST_ALGO=*:shm still reaches it). Over 8 ranks: no shared-memory algorithm either.
    ops = ("all_gather", "all_sum", "sum_scatter", "broadcast", "all_to_all", "scatter", "all_gather_uneven",
           "reduce", "scan", "gather", "barrier")

    def rank(g: rd.Group) -> tuple:
        x = np.full(1 << 18, g.rank() + 1, np.float32)
        names = [tuning.choose(g, op, nbytes).name for op in ops for nbytes in (4096, 64 << 10, 1 << 20, 16 << 20)]
        return g.shm is not None, names, rd.all_sum(x, group=g)
    for n in (2, 4, 10):
        on = run_ranks(n, rank, direct_max=0)
        off = run_ranks(n, rank, direct_max=0, shm=False)
        for (has_shm, names, total), (_, tcp_names, _) in zip(on, off):
            assert has_shm and names == tcp_names, (n, names, tcp_names)
            assert not {name for name in names if name.startswith("shm") or name == "direct"}, names
            if n <= 8:  # the ring, or the pair's own ring
                assert set(names) <= {"ring", "pairwise-ring", "dissemination"}, sorted(set(names))
            assert (total == n * (n + 1) / 2).all()


def test_descriptors_dropped_for_want_of_room_are_named_as_this_process_s_limit():
    # The kernel drops descriptors a full table has no room for (MSG_CTRUNC): the error says so,
    # where it blamed the peer ("no shared memory received") or versions of ringdist.
    import subprocess
    code = """
import os, resource, socket, time
from ringdist import channel
from ringdist.errors import ConnectError
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
r, w = os.pipe()
socket.send_fds(a, [b"x" * 25], [r, w])
used = len(os.listdir("/proc/self/fd")) - 1
resource.setrlimit(resource.RLIMIT_NOFILE, (used, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    channel.recv_fds(b, 25, 2, time.monotonic() + 5, peer="rank 1")
except ConnectError as exc:
    print(exc)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"cannot receive the shared memory of rank 1: the system dropped its descriptors \(more than "
                        r"2 sent, or this process is out of file descriptors: (\d+ open, )?limit \d+\); raise "
                        r"`ulimit -n`, or use fewer groups at once\n", res.stdout), \
        res.stdout + res.stderr


def _waiting(g: rd.Group, group: str | None = None) -> list[str]:
    """The kinds of connection filed for `group` (every group but the world's) in the inbox of
    g's endpoint, waiting for a taker."""
    return sorted(k.kind for k in g._endpoint._inbox if (k.group == group if group else k.group != "world"))


def test_a_vote_for_tcp_leaves_no_shared_memory_connection_waiting():
    # Ranks below dial the ranks above before the vote; after a vote for TCP nothing takes those
    # connections, and each rank kept one from every rank below it for the group's life.
    def rank(g: rd.Group) -> tuple:
        sub = g.split(0)
        time.sleep(0.2)  # a connection filed late is closed as it comes
        return g.shm is None, sub.shm is None, _waiting(g, "world"), _waiting(g)

    got = run_ranks(4, rank, rank_overrides={1: {"shm": False}})
    assert all(x == (True, True, [], []) for x in got), got


def test_a_group_that_could_not_be_made_leaves_nothing_waiting():
    from ringdist import shm as shm_module
    failing = threading.local()
    receive = shm_module._receive

    def fails_on_rank_2(*args):
        if getattr(failing, "here", False):
            raise rd.ConnectError("cannot map shared memory (a test's failure)")
        return receive(*args)

    def rank(g: rd.Group) -> tuple:
        failing.here = g.rank() == 2
        try:
            g.split(0, key=g.rank())
            outcome = "made"
        except rd.RingError as exc:
            outcome = type(exc).__name__
        time.sleep(0.3)
        return outcome, _waiting(g)

    shm_module._receive = fails_on_rank_2
    try:
        got = run_ranks(4, rank, timeout=60)
    finally:
        shm_module._receive = receive
    assert got[2][0] == "ConnectError" and all(outcome != "made" for outcome, _ in got), got
    assert all(waiting == [] for _, waiting in got), got


def test_a_message_for_a_group_closed_here_is_not_kept():
    # Rank 1 closes the group first; rank 0's message on it arrives after: its connection is
    # closed, not filed for good.
    def rank(g: rd.Group) -> list:
        sub = g.split(0)
        if g.rank() == 1:
            sub.close()
        rd.barrier(group=g)
        if g.rank() == 0:
            try:
                rd.send(np.ones(4), 1, group=sub)
            except rd.RingError:
                pass
        rd.barrier(group=g)
        time.sleep(0.2)
        if g.rank() == 0:
            sub.close()
        return _waiting(g)

    assert run_ranks(2, rank) == [[], []]


def test_a_rank_without_room_for_the_descriptors_votes_for_tcp(caplog, monkeypatch):
    # 64 ranks at a limit of 128 files could not start: every rank mapping its peers' segments
    # ran out of descriptors, where TCP needs a dozen there.
    from ringdist import channel
    short = threading.local()
    room = channel.fd_room

    def little_room_on_rank_1() -> int | None:
        return 20 if getattr(short, "here", False) else room()

    def rank(g: rd.Group) -> tuple:
        short.here = g.rank() == 1
        sub = g.split(0)
        return sub.shm is None, rd.all_sum(np.ones(3), group=sub).tolist()

    from ringdist import shm as shm_module
    monkeypatch.setattr(shm_module, "_told_room", False)  # a warning the first time in a process
    channel.fd_room = little_room_on_rank_1
    try:
        got = run_ranks(3, rank)
    finally:
        channel.fd_room = room
    assert got == [(True, [3.0, 3.0, 3.0])] * 3, got
    assert re.search(r"rank 1 of group 'world/\d+:0': 20 more open files would fit under this process's limit "
                     r"\((\d+ open, )?limit \d+\), too few for shared memory with 3 ranks; the group uses TCP "
                     r"\(raise `ulimit -n`\)", caplog.text), caplog.text


def test_a_dial_that_never_gets_through_still_votes_in_time(monkeypatch):
    # A peer out of open files cannot accept: the rank dialing it waits out its dial, and must
    # still say no while the others wait for the vote. Its dial ran to the vote's own deadline,
    # and the others timed out in the vote while it went on to TCP: a split that worked on some
    # ranks and raised on the rest.
    from ringdist import endpoint as endpoint_module
    real = endpoint_module.Endpoint.connect_local

    def stuck(self, address, key, deadline, peer):
        if key.group != "world" and peer.startswith("rank 1 "):
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.3)  # (a last try's handshake ends just past it)
            return None
        return real(self, address, key, deadline, peer)

    monkeypatch.setattr(endpoint_module.Endpoint, "connect_local", stuck)

    def rank(g: rd.Group) -> tuple:
        sub = g.split(0)
        return sub.shm is None, rd.all_sum(np.ones(2), group=sub).tolist()

    assert run_ranks(4, rank, connect_timeout=3) == [(True, [4.0, 4.0])] * 4
