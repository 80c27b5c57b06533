"""Groups past the mesh (over 8 ranks): links opened on first use, and the latency-optimal
algorithms (recursive doubling for any N, Bruck, Rabenseifner, binomial broadcast, the
dissemination barrier) giving every rank the same bits.

In-process groups (ranks as threads over real sockets, `harness.run_ranks`) for the
algorithms at every N from 1 to 17; real launches at 16 and 17 ranks for the table's
own choices and the sockets each rank holds.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.algorithms import ALGORITHMS
from ringdist.settings import Settings

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, LineReader, kill_tree, run_launcher, start_launcher, wait_until_gone

REDUCING = sorted(name for name, a in ALGORITHMS.items() if a.reduce is not None)
COUNTS = [0, 1, 7, 1000, 3001]  # empty, one element, uneven blocks, blocks of every size


def inputs(n: int, count: int) -> list[np.ndarray]:
    return [np.random.default_rng(1000 * n + q).standard_normal(count).astype(np.float32) for q in range(n)]


@pytest.mark.parametrize("name", REDUCING)
@pytest.mark.parametrize("n", range(1, 18))
def test_float_reductions_give_every_rank_the_same_bits(n, name):
    """Random float32 data (no order of summation gives exact results): whatever order an
    algorithm adds in, every rank must end with the same bytes, close to the exact sum;
    contiguous and strided inputs. An algorithm that cannot run at this N refuses on every rank."""

    def rank(g: rd.Group) -> list:
        out = []
        for count in COUNTS:
            x = inputs(n, 2 * count)[g.rank()]
            for arr in (x[:count], x[::2]):
                try:
                    out.append(rd.all_sum(arr, group=g))
                except rd.ConfigError as exc:
                    out.append(exc)
        return out

    results = run_ranks(n, rank, algo=(("all_sum", name),))
    i = 0
    for count in COUNTS:
        data = inputs(n, 2 * count)
        for strided in (False, True):
            got = [results[r][i] for r in range(n)]
            i += 1
            where = f"{name}, N={n}, {count} float32{' strided' if strided else ''}"
            if isinstance(got[0], rd.ConfigError):
                assert n > 1 and all(str(e) == str(got[0]) for e in got), where
                continue
            exact = np.sum([x[::2] if strided else x[:count] for x in data], axis=0, dtype=np.float64)
            assert np.allclose(got[0], exact, rtol=1e-5, atol=1e-4), where
            assert all(g.tobytes() == got[0].tobytes() for g in got), f"{where}: ranks differ"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 12, 16, 17])
def test_sum_scatter_by_recursive_halving(n):
    """Rabenseifner's reduce-scatter: every rank's block, uneven group sizes, strided input."""

    def rank(g: rd.Group) -> list:
        r = g.rank()
        base = np.arange(2 * 6 * n, dtype=np.int64) * (r + 1)
        return [rd.sum_scatter(base[:6 * n], group=g), rd.sum_scatter(base[::2], group=g),
                rd.sum_scatter(np.zeros((n, 0)), group=g)]

    results = run_ranks(n, rank, algo=(("sum_scatter", "rabenseifner"),))
    total = n * (n + 1) // 2
    for r, (flat, strided, empty) in enumerate(results):
        assert flat.tolist() == [total * v for v in range(6 * r, 6 * r + 6)], (n, r, flat)
        assert strided.tolist() == [total * 2 * v for v in range(6 * r, 6 * r + 6)], (n, r, strided)
        assert empty.shape == (1, 0)


@pytest.mark.parametrize("n", [9, 16, 17])
def test_links_open_on_first_use_only(n):
    """A group over 8 ranks opens no link beyond the ring's when it is made; a doubling
    reduction and a barrier then open at most 2·ceil(log2 N) per rank, not N-1."""

    def rank(g: rd.Group) -> tuple:
        before = len(g.links.peers)
        rd.all_sum(np.ones(10), group=g)
        rd.barrier(group=g)
        return before, len(g.links.peers), rd.all_sum(np.ones(3), group=g)

    results = run_ranks(n, rank, algo=(("all_sum", "doubling"), ("barrier", "dissemination")))
    for r, (before, after, total) in enumerate(results):
        assert before == 2, (r, before)
        assert 2 < after <= 2 * math.ceil(math.log2(n)), (r, after)
        assert total.tolist() == [n] * 3


@pytest.mark.parametrize("late", ["lower", "higher"])
def test_either_side_of_a_link_may_come_first(late):
    """The lower rank dials and the higher accepts; whichever comes to its first use of
    the link later, the connection is filed for the right group and peer and the call
    completes (here after a second group of the same ranks opened its own links too)."""
    n = 12

    def rank(g: rd.Group) -> list:
        r = g.rank()
        sub = g.split(color=0, key=n - r)  # reversed: a second group, other pairs
        if (r < n // 2) == (late == "lower"):
            time.sleep(0.2)
        return [rd.all_gather(np.array([r]), group=g), rd.all_sum(np.array([r]), group=sub),
                rd.all_gather(np.array([r]), group=sub)]

    results = run_ranks(n, rank, algo=(("all_gather", "bruck"), ("all_sum", "doubling")))
    for r, (gathered, total, reversed_) in enumerate(results):
        assert gathered.tolist() == list(range(n))
        assert total.tolist() == [n * (n - 1) // 2]
        assert reversed_.tolist() == list(range(n - 1, -1, -1))


def test_a_rank_waiting_for_a_link_hears_of_a_failure_elsewhere():
    """Rank 0 of 10 never comes, so rank 8 waits for the link rank 0 should dial (the lower
    rank dials); rank 9 gives up waiting for rank 1 after 1 s and sends an ABORT, which
    reaches rank 8 while it waits for the connection: it raises within seconds, not after
    its own 30 s timeout."""
    n = 10
    raised: dict[int, float] = {}

    def rank(g: rd.Group) -> None:
        r = g.rank()
        if r == 0:
            return
        start = time.monotonic()
        try:
            rd.all_sum(np.ones(4), group=g, timeout=1 if r == 9 else None)
        finally:
            raised[r] = time.monotonic() - start

    with pytest.raises(RankFailed) as failed:
        run_ranks(n, rank, settings=Settings(timeout=30.0, connect_timeout=10.0), algo=(("all_sum", "doubling"),))
    errors = failed.value.errors
    assert isinstance(errors[9], rd.RingTimeoutError), errors
    assert isinstance(errors[8], rd.RingError) and "aborted by rank 9" in str(errors[8]), errors
    assert raised[8] < 10, raised
    assert all(isinstance(errors[r], rd.RingError) for r in range(1, n)), errors


def test_a_link_that_never_comes_times_out_naming_the_peer():
    """Rank 0 of 10 never comes: rank 8, waiting for the link rank 0 should dial, raises
    RingTimeoutError naming rank 0 after its 1 s timeout; the others (20 s) hear of it at once."""
    n = 10
    raised: dict[int, float] = {}

    def rank(g: rd.Group) -> None:
        r = g.rank()
        if r == 0:
            return
        start = time.monotonic()
        try:
            rd.all_sum(np.ones(4), group=g, timeout=1 if r == 8 else None)
        finally:
            raised[r] = time.monotonic() - start

    with pytest.raises(RankFailed) as failed:
        run_ranks(n, rank, settings=Settings(timeout=20.0, connect_timeout=10.0), algo=(("all_sum", "doubling"),))
    errors = failed.value.errors
    assert isinstance(errors[8], rd.RingTimeoutError) and "waiting for rank 0 to connect" in str(errors[8]), errors
    assert all(isinstance(errors[r], rd.RingError) for r in range(1, n)), errors
    assert max(raised.values()) < 10, raised


@pytest.mark.parametrize("n", [16, 17])
def test_launched_groups_past_the_mesh(n):
    """Real processes: every small collective on the table's choice, checked, and each rank
    holding O(log N) sockets (ring, links to its partners, listener, control), not N-1."""
    res = run_launcher(["-n", str(n), str(SCRIPTS / "scale_check.py")], timeout=120,
                       env={"RINGDIST_TIMEOUT": "60"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = {int(r): int(s) for r, s in re.findall(r"ok rank=(\d+) sockets=(\d+)", res.stdout)}
    assert sorted(found) == list(range(n)), res.stdout[-3000:]
    assert max(found.values()) <= 2 * math.ceil(math.log2(n)) + 3, found


@pytest.mark.parametrize("n, shm", [(16, "1"), (16, "0"), pytest.param(64, "1", marks=pytest.mark.slow),
                                    pytest.param(64, "0", marks=pytest.mark.slow)])
def test_the_calls_mpi_code_ports_at_scale(n, shm):
    """A manager and N-1 workers (recv_object_any), uneven reduce_scatter, all_maxloc, a Grid's
    sendrecv halo and sub-groups, async calls and wait_all: real processes, over shared memory
    and over TCP."""
    res = run_launcher(["-n", str(n), str(SCRIPTS / "ported_calls.py")], timeout=300,
                       env={"RINGDIST_TIMEOUT": "60", "RINGDIST_SHM": shm})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert re.search(rf"^\[0\] ported ok n={n} dims=", res.stdout, re.M), res.stdout[-3000:]


GATHERING = sorted(name for name, a in ALGORITHMS.items() if a.gather is not None)
BROADCASTING = sorted(name for name, a in ALGORITHMS.items() if a.broadcast is not None)


@pytest.mark.parametrize("name", sorted(set(GATHERING) | set(BROADCASTING)))
@pytest.mark.parametrize("n", range(1, 18))
def test_gathers_and_broadcasts_of_every_shape(n, name):
    """Each all-gather and broadcast algorithm, forced, on empty, one-row, uneven, 2-D and
    strided inputs, every root of a broadcast: numpy's answer on every rank (or the same
    refusal on every rank, where the algorithm cannot run at this N)."""
    shapes = [(0,), (1,), (7,), (5, 3), (0, 4)]

    def rank(g: rd.Group) -> list:
        r, out = g.rank(), []
        for shape in shapes:
            x = (np.arange(int(np.prod(shape))).reshape(shape) + 100 * r).astype(np.float32)
            for case in ("gather", "gather-strided", "broadcast"):
                try:
                    if case == "broadcast":
                        out.append(rd.broadcast(x, root=(len(out) + n // 2) % n, group=g))
                    elif case == "gather":
                        out.append(rd.all_gather(x, group=g))
                    else:
                        out.append(rd.all_gather(np.repeat(x, 2, axis=-1)[..., ::2], group=g))
                except rd.ConfigError as exc:
                    out.append(exc)
        return out

    results = run_ranks(n, rank, algo=(("all_gather", name), ("broadcast", name)))
    i = 0
    for shape in shapes:
        inputs = [(np.arange(int(np.prod(shape))).reshape(shape) + 100 * q).astype(np.float32) for q in range(n)]
        for case in ("gather", "gather-strided", "broadcast"):
            got = [results[r][i] for r in range(n)]
            where = f"{name} {case} {shape}, N={n}"
            root = (i + n // 2) % n
            i += 1
            if isinstance(got[0], rd.ConfigError):
                assert n > 1 and all(str(e) == str(got[0]) for e in got), where
                continue
            want = inputs[root] if case == "broadcast" else np.concatenate(inputs)
            for r in range(n):
                assert got[r].shape == want.shape and np.array_equal(got[r], want), f"{where}, rank {r}"


@pytest.mark.parametrize("op,mib", [("all_sum", "0.00390625"), ("all_gather", "0.0625"), ("all_sum", "1")],
                         ids=["doubling", "bruck", "rabenseifner"])
def test_kill_9_past_the_mesh_reaches_every_rank_within_5s(op, mib):
    """10 ranks in a loop of collectives on links opened on first use (4 KiB all_sum:
    doubling; 64 KiB all_gather: Bruck; 1 MiB all_sum: Rabenseifner): a rank killed with
    SIGKILL is an error on every other rank within 5 s, not after the 30 s timeout."""
    n = 10
    rng = random.Random(op + mib)
    for _ in range(2):
        proc = start_launcher(["-n", str(n), "--grace", "10", str(SCRIPTS / "long_loop.py"), op, mib],
                              env={"RINGDIST_TIMEOUT": "30"})
        try:
            out = LineReader(proc.stdout)
            found = out.wait_for(r"^\[(\d+)\] ready pid=(\d+)$", count=n, timeout=60)
            pids = {int(m.group(1)): int(m.group(2)) for m in found}
            time.sleep(rng.uniform(0.0, 0.3))
            victim = rng.randrange(n)
            os.kill(pids[victim], signal.SIGKILL)
            killed_at = time.time()
            proc.wait(timeout=40)
            text = out.rest()
        finally:
            kill_tree(proc)
        raised = {int(r): (name, float(t) - killed_at)
                  for r, name, t in re.findall(r"^\[(\d+)\] raised (\w+) at ([\d.]+):", text, re.M)}
        assert sorted(raised) == sorted(set(range(n)) - {victim}), (victim, text[-3000:])
        assert all(name in ("PeerLostError", "RingTimeoutError") and t < 5.0 for name, t in raised.values()), raised
        assert not wait_until_gone(list(pids.values()), timeout=10)
