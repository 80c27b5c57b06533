"""Reductions, sum_scatter, broadcast, barrier and point-to-point, through real ranks."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import ringdist as rd

from harness import run_ranks
from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}
PEAK_MEMORY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="measures peak resident memory through /proc (VmHWM)")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_collective_against_numpy_on_world_and_split_groups(n):
    big = str(16 << 20) if n in (2, 4) else "0"
    res = run_launcher(["-n", str(n), str(SCRIPTS / "collectives_matrix.py"), big], timeout=240, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    oks = re.findall(r"^\[(\d+)\] collectives ok rank=\d+ size=(\d+) cases=(\d+)$", res.stdout, re.M)
    assert sorted(int(r) for r, _, _ in oks) == list(range(n))
    assert all(int(cases) >= 599 * (2 if n > 1 else 1) for _, _, cases in oks)


@pytest.mark.parametrize("n,direct_max,directions", [(2, "0", "2"), (2, "0", "1"), (3, "0", "2"), (4, "0", "2"),
                                                    (3, "8", "2"), (4, "512", "2")])
def test_every_collective_on_the_other_paths(n, direct_max, directions):
    # Small groups take the direct path for these small cases by default (two ranks going one way
    # round the ring reduce arrays of up to 512 KiB by exchanging them whole on their direct
    # connection). With RINGDIST_DIRECT_MAX=0 every case runs on the ring (two lanes; both ways
    # round, as across hosts, a large all_sum of an odd size is cut into 4 streams), except that
    # two ranks reduce arrays of up to 2 MiB by exchanging them whole on the ring's connections
    # (both of them both ways, one of each way one way). With 8 or 512 bytes, reductions of up to
    # N times that take the two-step direct path (uneven and empty blocks included), larger ones the ring.
    env = dict(FAST, RINGDIST_DIRECT_MAX=direct_max, RINGDIST_LANES="2", RINGDIST_DIRECTIONS=directions)
    big = str((3 << 20) + 12)
    res = run_launcher(["-n", str(n), str(SCRIPTS / "collectives_matrix.py"), big], timeout=240, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    oks = re.findall(r"^\[(\d+)\] collectives ok rank=\d+ size=(\d+) cases=(\d+)$", res.stdout, re.M)
    assert sorted(int(r) for r, _, _ in oks) == list(range(n))
    assert all(int(cases) >= 599 * 2 for _, _, cases in oks)


def test_point_to_point_between_any_pair():
    res = run_launcher(["-n", "4", str(SCRIPTS / "p2p_matrix.py")], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(re.findall(r"^\[(\d)\] p2p ok", res.stdout, re.M)) == ["0", "1", "2", "3"]
    assert re.search(r"^\[0\] pingpong 1000 round trips in [\d.]+s$", res.stdout, re.M)


def test_recv_of_a_different_shape_is_a_mismatch():
    res = run_launcher(["-n", "2", str(SCRIPTS / "p2p_mismatch.py")], timeout=60, env=FAST)
    assert res.returncode == 3, res.stdout + res.stderr
    assert ("[1] MismatchError: rank 1 expected recv(shape=(5,), dtype=float32) from rank 0 "
            "but rank 0 sent send(shape=(4,), dtype=float32)") in res.stdout


@pytest.mark.parametrize("side", ["send", "isend", "recv"])
def test_a_message_whose_dtype_no_header_can_name_is_refused_and_the_pair_s_next_one_arrives(side):
    # numpy describes no dtype with out-of-order fields: refused before the message takes the
    # pair's next number (taken, the next message was a mismatch on the receiver, or went
    # through on the sender while its receiver raised).
    bad = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [4, 0]})
    refused = r"rank {}: {}: dtype .* has overlapping or out-of-order fields, which numpy cannot describe"

    def rank(g):
        if g.rank() == 0:
            if side != "recv":
                with pytest.raises(ValueError, match=refused.format(0, "send")):
                    work = rd.send(np.zeros(3, bad), 1, group=g, async_op=side == "isend")
                    if work is not None:
                        work.wait()
            rd.send(np.arange(3), 1, group=g)
            return rd.all_sum(np.ones(1), group=g)
        if side == "recv":
            with pytest.raises(ValueError, match=refused.format(1, "recv")):
                rd.recv(3, bad, 0, group=g)
        return rd.recv(3, np.int64, 0, group=g), rd.all_sum(np.ones(1), group=g)

    total, (got, total_1) = run_ranks(2, rank)
    assert np.array_equal(got, np.arange(3)) and total[0] == total_1[0] == 2.0


def test_a_recv_asking_for_a_subarray_or_unsized_dtype_gets_the_array_numpy_makes_of_it():
    # recv(3, ('f8', (2,))) makes a (3, 2) float64 array, recv(3, 'S') one of |S1: what a sender
    # of such arrays sends. Compared as asked ('|V16', '|S0'), no send could ever match them.
    def rank(g):
        if g.rank() == 0:
            rd.send(np.arange(6.0).reshape(3, 2), 1, group=g)
            rd.send(np.array([b"a", b"b", b"c"]), 1, group=g)
            return None
        return rd.recv(3, np.dtype(("f8", (2,))), 0, group=g), rd.recv(3, "S", 0, group=g)

    _, (sub, unsized) = run_ranks(2, rank)
    assert sub.dtype == np.float64 and np.array_equal(sub, np.arange(6.0).reshape(3, 2))
    assert unsized.dtype == np.dtype("S1") and unsized.tolist() == [b"a", b"b", b"c"]


@PEAK_MEMORY
@pytest.mark.parametrize("algo", ["ring", "table"])
def test_all_to_all_past_the_mesh_over_tcp_keeps_its_memory_bounded(algo):
    # 12 ranks over TCP (no mesh), 1 MiB blocks: input and output 12 MiB each.
    # - The ring relays the blocks: a hop's buffer holds the blocks still to pass on, N-1 at
    #   most; kept whole until the end, the hops' buffers came to N(N-1)/2 blocks (66 MiB more
    #   here), now about two hops' worth.
    # - The table's choice, pairwise exchange, lands every block in its place: input + output,
    #   and the 16 MiB the performance target allows is far more than it needs.
    env = {**FAST, "RINGDIST_SHM": "0", **({"RINGDIST_ALGO": "all_to_all:ring"} if algo == "ring" else {})}
    res = run_launcher(["-n", "12", str(SCRIPTS / "memory_peak.py"), "12", "all_to_all", "2"], timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.findall(r"^\[(\d+)\] shm=False in=([\d.]+) out=([\d.]+) peak=([\d.]+)$", res.stdout, re.M)
    assert len(found) == 12, res.stdout + res.stderr
    for r, inp, out, peak in found:
        extra = 2 * 11 + 4 if algo == "ring" else 4
        assert float(peak) <= float(inp) + float(out) + extra, (r, inp, out, peak)


@PEAK_MEMORY
def test_all_gather_peak_memory_is_input_plus_output_call_after_call():
    # 24 MiB per rank on 4 ranks: input 24 + output 96 MiB; the target allows 16 MiB more.
    res = run_launcher(["-n", "4", str(SCRIPTS / "memory_peak.py"), "24"], timeout=120, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    peaks = [float(p) for p in re.findall(r"^\[\d\] call \d: peak ([\d.]+) MiB over baseline$", res.stdout, re.M)]
    assert len(peaks) == 12, res.stdout
    assert all(24 + 96 - 1 <= p < 24 + 96 + 16 for p in peaks), peaks


@PEAK_MEMORY
@pytest.mark.parametrize("op", ["sum_scatter", "reduce", "reduce_scatter_counts", "exscan"])
def test_the_ring_reduce_scatter_and_a_rooted_reduce_over_tcp_hold_a_window_not_the_array(op):
    # 4 ranks over TCP, 64 MiB a rank. The ring's reduce-scatter held (N-2)/N of the input in
    # partial sums (32 MiB: peak 112 where 96 is allowed); a rooted reduce ran the all-reduce
    # on every rank, a whole result off the root too (128 where 80 is allowed); reduce_scatter
    # with counts received every rank's block of its rows whole (N times its result: 129 MiB
    # where 89 is allowed on rank 3); an exclusive scan passed its fold on from a scratch copy
    # of the array (192 where 144 is allowed on ranks 1 and 2). In 8 MiB windows
    # (`ring.SCRATCH_WINDOW`) each holds about 8 MiB more than its input and output.
    env = {**FAST, "RINGDIST_SHM": "0", "RINGDIST_BUFFER_CACHE_MB": "0"}
    res = run_launcher(["-n", "4", str(SCRIPTS / "memory_peak.py"), "64", op, "1"], timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.findall(r"^\[(\d+)\] shm=False in=([\d.]+) out=([\d.]+) peak=([\d.]+)$", res.stdout, re.M)
    assert len(found) == 4, res.stdout + res.stderr
    for r, inp, out, peak in found:
        assert float(peak) <= float(inp) + float(out) + 12, (r, inp, out, peak)


@PEAK_MEMORY
def test_a_ring_all_sum_over_tcp_holds_no_scratch_for_its_partial_sums():
    # 4 ranks over TCP, 32 MiB a rank: the ring's reduce-scatter runs on into its all-gather, and
    # the partial sums land in the result's blocks the all-gather fills later. They had a
    # scratch array of (N-2)/N of the input: 16 MiB more here, past the 16 MiB allowed at 64.
    env = {**FAST, "RINGDIST_SHM": "0", "RINGDIST_BUFFER_CACHE_MB": "0"}
    res = run_launcher(["-n", "4", str(SCRIPTS / "memory_peak.py"), "32", "all_sum", "2"], timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.findall(r"^\[(\d+)\] shm=False in=([\d.]+) out=([\d.]+) peak=([\d.]+)$", res.stdout, re.M)
    assert len(found) == 4, res.stdout + res.stderr
    for r, inp, out, peak in found:
        assert float(peak) <= float(inp) + float(out) + 4, (r, inp, out, peak)
