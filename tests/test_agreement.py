"""Ranks that disagree on a collective fail on every rank, in that call; none returns normally.

Also: a rank that arrives after its peer gave up on the call (a timeout) fails too.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import ringdist as rd

from harness import run_ranks
from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "10", "RINGDIST_CONNECT_TIMEOUT": "10"}


def outcomes(stdout: str, prefix: str = "") -> dict[int, str]:
    """Each rank's `outcome` line (the first one after `prefix`), by rank."""
    found = re.findall(rf"^\[(\d+)\] {re.escape(prefix)}outcome after ([\d.]+)s: (.*)$", stdout, re.M)
    return {int(r): text for r, _, text in found}


def disagree(n: int, case: str, env: dict | None = None):
    res = run_launcher(["-n", str(n), str(SCRIPTS / "disagree.py"), case], timeout=60, env={**FAST, **(env or {})})
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.parametrize("env", [{}, {"RINGDIST_DIRECT_MAX": "0"}], ids=["direct", "ring"])
def test_every_rank_passing_its_own_rank_as_root_raises(env):
    res = disagree(4, "own_root", env)
    got = outcomes(res.stdout)
    assert sorted(got) == [0, 1, 2, 3], res.stdout
    assert all(text.startswith("MismatchError: ") for text in got.values()), res.stdout
    # A rank that saw the difference itself names both roots.
    seen = [t for t in got.values() if "aborted by" not in t]
    assert seen and all(re.search(r"broadcast\(.*root=(\d).*\) \[call #0\] but rank \d called broadcast\(.*root=(?!\1)\d", t)
                        for t in seen), seen


@pytest.mark.parametrize("env", [{}, {"RINGDIST_DIRECT_MAX": "0"}], ids=["direct", "ring"])
def test_ranks_split_over_two_roots_fail_in_the_broadcast_itself(env):
    res = disagree(4, "split_root", env)
    got = outcomes(res.stdout)
    assert sorted(got) == [0, 1, 2, 3], res.stdout
    assert "100 small calls returned" not in res.stdout
    assert all(text.startswith("MismatchError: ") and "broadcast" in text and "all_gather" not in text
               for text in got.values()), res.stdout
    assert any("root=0" in t and "root=2" in t for t in got.values()), res.stdout


@pytest.mark.parametrize("env", [{}, {"RINGDIST_DIRECT_MAX": "0"}], ids=["direct", "ring"])
def test_a_root_with_a_different_shape_raises_as_the_others_do(env):
    res = disagree(4, "root_shape", env)
    got = outcomes(res.stdout)
    assert sorted(got) == [0, 1, 2, 3], res.stdout
    assert all(text.startswith("MismatchError: ") for text in got.values()), res.stdout
    assert "shape=(5,)" in got[0] and "shape=(4,)" in got[0], got[0]


def test_ranks_on_different_algorithms_find_out_at_once():
    # sum_scatter on the ring against all_max by recursive doubling: before, every rank
    # waited on a connection the other pair never wrote, until RingTimeoutError.
    res = disagree(4, "algorithms")
    got = outcomes(res.stdout)
    assert sorted(got) == [0, 1, 2, 3], res.stdout
    assert all(text.startswith("MismatchError: ") for text in got.values()), res.stdout
    assert any(re.search(r"called (sum_scatter|all_max)\(.*\) \[call #0\] but rank \d called (sum_scatter|all_max)", t)
               for t in got.values()), res.stdout
    assert all(float(t) < 5 for t in re.findall(r"outcome after ([\d.]+)s", res.stdout))


def test_a_pair_exchanging_on_different_connections_fails_on_both_ranks():
    # Before, both sent the same header: rank 1 (the ring's connections) returned normally,
    # rank 0 (the direct one) waited for bytes that came on the other connection.
    res = disagree(2, "pair_path", {"RINGDIST_SHM": "0"})  # two TCP paths
    got = outcomes(res.stdout)
    assert sorted(got) == [0, 1], res.stdout
    assert all(text.startswith("MismatchError: ") and "chose different paths" in text for text in got.values()), got
    assert any("pairwise-ring here, pairwise there" in t or "pairwise here, pairwise-ring there" in t
               for t in got.values()), got


@pytest.mark.parametrize("env", [{}, {"RINGDIST_DIRECT_MAX": "0"}], ids=["direct", "ring"])
def test_a_rank_arriving_after_its_peer_timed_out_raises(env):
    res = disagree(2, "late", env)
    for op in ("broadcast(root=1)", "broadcast(root=0)", "all_gather", "all_sum", "barrier"):
        got = outcomes(res.stdout, f"{op} ")
        assert sorted(got) == [0, 1], res.stdout
        assert got[0].startswith("RingTimeoutError: rank 0: "), (op, got)
        assert got[1].startswith(f"RingTimeoutError: rank 1: {op.split('(')[0]} aborted by rank 0: rank 0: "), (op, got)


FUZZ_OPS = ["all_gather", "all_sum", "all_max", "all_min", "all_prod", "sum_scatter", "broadcast", "barrier", "p2p"]


@pytest.mark.parametrize("n,seed,trials,env,extra", [
    (5, 1, 150, {"RINGDIST_SHM": "0"}, []),  # direct, doubling, pairwise and two-shot paths; groups of 2 to 5
    (4, 2, 100, {"RINGDIST_SHM": "0", "RINGDIST_DIRECT_MAX": "0", "RINGDIST_LANES": "2", "RINGDIST_DIRECTIONS": "2"},
     ["--large"]),
    (13, 8, 100, {}, []),  # groups of up to 13: doubling, Bruck, Rabenseifner, binomial, dissemination
    (4, 3, 100, {}, ["--large"]),  # shared memory against TCP paths, and calls that differ over shared memory
], ids=["direct-paths", "ring-lanes-both-ways", "past-the-mesh", "shared-memory"])
def test_seeded_disagreeing_calls_fail_on_every_rank_of_the_group(n, seed, trials, env, extra):
    # Each trial: a fresh sub-group; some members change the op, root, shape, dtype or path of
    # the call (tests/scripts/agree_fuzz.py). Every member must raise (MismatchError naming both
    # sides, then GroupBrokenError) within 10 s, though a timeout would take 30; the world stays exact.
    res = run_launcher(["-n", str(n), str(SCRIPTS / "agree_fuzz.py"), str(seed), str(trials), *extra],
                       timeout=180, env={**FAST, "RINGDIST_TIMEOUT": "30", **env})
    first = re.search(r"rank (\d+) \(host [^)]*\) (?:exited|was killed)", res.stderr)
    own = [line for line in (res.stdout + res.stderr).splitlines() if first and line.startswith(f"[{first.group(1)}]")]
    assert res.returncode == 0, "\n".join(own)[-5000:] + "\n...\n" + res.stdout[-3000:] + res.stderr[-3000:]
    assert "FAILED" not in res.stdout, "\n".join(l for l in res.stdout.splitlines() if "FAILED" in l)[:5000]
    oks = re.findall(rf"^\[(\d+)\] fuzz ok rank=\d+ trials={trials} failures=0 (.*)$", res.stdout, re.M)
    assert sorted(int(r) for r, _ in oks) == list(range(n)), res.stdout[-3000:]
    counts: dict[str, int] = {}
    for _, summary in oks:
        for key, value in (item.split("=") for item in summary.split()):
            counts[key] = counts.get(key, 0) + int(value)
    missing = [f"op:{op}" for op in FUZZ_OPS] + [f"kind:{k}" for k in ("op", "root", "shape", "dtype", "path")]
    assert all(counts.get(key, 0) > 0 for key in missing), counts
    assert counts["outcome:MismatchError"] > trials, counts


@pytest.mark.parametrize("n, env", [(4, {}), (4, {"RINGDIST_SHM": "0"}), (9, {}), (9, {"RINGDIST_SHM": "0"})],
                         ids=["segments", "direct", "segments-9", "binomial"])
def test_a_scatter_of_a_dtype_only_the_root_knows_fails_on_every_other_rank(n, env):
    # The others cannot take their blocks (numpy there does not know bfloat16): they all raise.
    # The binomial tree closes with agreement rounds, so its root, which only sends, raises too;
    # in one step (direct) or one round of the segments the root may be done first, and returns.
    res = disagree(n, "unknown_dtype", env)
    got = outcomes(res.stdout)
    assert sorted(got) == list(range(n)), res.stdout
    assert all(text.startswith("MismatchError: ") and "bfloat16" in text for r, text in got.items() if r), res.stdout
    if n == 9 and env:
        assert got[0].startswith("MismatchError: ") and "bfloat16" in got[0], res.stdout
    else:
        assert got[0] == "returned" or got[0].startswith("MismatchError: "), res.stdout


def two_threads(mode: str, env: dict) -> dict[str, str]:
    res = run_launcher(["-n", "2", str(SCRIPTS / "two_threads.py"), mode], timeout=60, env={**FAST, **env})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = re.findall(r"^\[(\d)\] ([^:]+): (.*)$", res.stdout, re.M)
    return {f"{r} {who}": text for r, who, text in lines}


@pytest.mark.parametrize("mode", ["overlap", "async"])
@pytest.mark.parametrize("env", [{}, {"RINGDIST_SHM": "0"}], ids=["shm", "tcp"])
def test_a_second_thread_calling_during_a_collective_is_refused_and_the_running_call_fails(mode, env):
    # Rank 0's thread A waits in an all_sum for rank 1 (2 s late) when another thread of rank 0
    # calls one on the same group (its main thread, or with async_op the group's runner).
    got = two_threads(mode, env)
    refused = got["0 main"]
    # The calling thread is named, not the group's runner that ran its async_op call.
    caller = "'MainThread'" if mode == "overlap" else r"'MainThread' \(its call run by 'ringdist-runner-world'\)"
    assert re.match(r"MismatchError after 0\.\d s: rank 0: all_sum on group 'world' from thread "
                    rf"{caller} while all_sum\(shape=\(4,\), dtype=float32\) \[call #0\] runs "
                    r"on it from thread 'Thread-1 \(report\)': a group's collectives must come from one thread "
                    r"at a time", refused), got
    # The running call cannot return as if nothing happened: rank 0 no longer knows its order of
    # calls, so rank 1 may have paired it with the other one. It fails, the group breaks, and
    # rank 1 is told (in its call, or at its next one when its call ended first).
    waited = re.match(r"MismatchError after ([\d.]+) s: .*from thread", got["0 thread A"])
    assert waited and float(waited.group(1)) >= 0.5, got  # until rank 1 came (2 s after its init)
    assert got["0 rank 0 next"].startswith("GroupBrokenError"), got
    told = [text for who, text in got.items() if who.startswith("1 ") and text.startswith("MismatchError")]
    assert len(told) == 1 and "aborted by rank 0" in told[0] and "one thread at a time" in told[0], got
    for who, text in got.items():  # a call that returned got the sum of the calls paired, 1 + 1
        assert not text.startswith("ok") or text == "ok 2.0", got


def test_threads_taking_turns_on_a_group_are_fine():
    got = two_threads("apart", {})
    assert got == {"0 thread 1.0": "ok 2.0", "1 thread 1.0": "ok 2.0", "0 thread 2.0": "ok 4.0",
                   "1 thread 2.0": "ok 4.0", "0 main": "ok 6.0", "1 main": "ok 6.0"}, got


def test_closing_a_group_while_another_thread_is_in_a_collective_on_it_is_refused():
    # Closing would take the connections and shared memory from under the running call (it
    # crashed with a TypeError through shared memory). Refused, nothing closed: the call ends
    # well, and the group closes once it has returned.
    got = two_threads("close", {})
    assert re.fullmatch(
        r"RingError after 0\.\d s: rank 0: group 'world/0:0' cannot be closed from thread 'MainThread' while "
        r"all_sum\(shape=\(4,\), dtype=float32\) \[call #0\] runs on it from thread 'Thread-1 \(report\)': close "
        r"it from that thread once the call has returned", got["0 main"]), got
    assert got["0 thread A"] == "ok 2.0" and got["1 rank 1"] == "ok 2.0", got
    assert got["0 main once A is done"] == "ok 2.0", got  # the group's size, read after closing


@pytest.mark.parametrize("n, op, env", [(2, "all_gather", {}), (2, "all_gather", {"RINGDIST_SHM": "0", "RINGDIST_DIRECTIONS": "2"}),
                                         (9, "all_sum", {"RINGDIST_SHM": "0"}), (9, "all_sum", {})],
                         ids=["2-shm", "2-tcp", "9-tcp", "9-shm"])
def test_a_message_failing_on_another_thread_leaves_a_running_collective_whole(n, op, env):
    # The failed recv's ABORT to the group's connections waits for the collective on them to
    # end: sent at once, it went inside one of its frames (rank 0 read a bad frame, or wrong
    # data), and past 8 ranks a link that collective opened after it was answered with it. That
    # collective goes well on every rank; the group fails from the next one on.
    res = run_launcher(["-n", str(n), str(SCRIPTS / "message_fails_in_a_collective.py"), op], timeout=90,
                       env={**FAST, **env})
    lines = {f"{r} {who}": text for r, who, text in re.findall(r"^\[(\d)\] (\w+): (.*)$", res.stdout, re.M)}
    failing = max(1, n - 2)
    why = (f"rank {failing} expected recv(shape=(1,), dtype=float64) from rank 0 but rank 0 sent "
           "send(shape=(2,), dtype=int32)")
    assert lines[f"{failing} recv"].startswith(f"MismatchError: {why}"), res.stdout
    assert all(lines[f"{r} call"] == "ok" for r in range(n)), res.stdout
    told = f"{op} aborted by rank {failing}: {why}"
    assert all(lines[f"{r} next"].startswith(f"MismatchError: rank {r}: {told}") for r in range(n) if r != failing), \
        res.stdout
    assert lines[f"{failing} next"].startswith(f"GroupBrokenError: rank {failing}: group 'world' cannot run {op}: an "
                                            f"earlier operation on it failed (recv: MismatchError: {why}"), res.stdout


def test_closing_a_group_while_another_thread_waits_in_a_recv_on_it_is_refused():
    # Closing took the recv's connection from under it: the recv waited out its timeout, then
    # blamed the peer ("Bad file descriptor"), and a message sent meanwhile was lost. Refused,
    # nothing closed: the message arrives, and the group closes once the recv has returned.
    sent = threading.Event()

    def rank(g):
        sub = g.split(0)
        if g.rank() == 1:
            assert sent.wait(20)
            rd.send(np.arange(4.0), 0, group=sub)
            return rd.barrier(group=sub)
        got = []
        waiter = threading.Thread(target=lambda: got.append(rd.recv(4, np.float64, 1, group=sub, timeout=20)),
                                  name="waiter")
        waiter.start()
        deadline = time.monotonic() + 10
        while not any(turn.locked() for turn in sub._p2p_turns.values()) and time.monotonic() < deadline:
            time.sleep(0.001)  # the waiter is in its recv
        with pytest.raises(rd.RingError, match=r"rank 0: group 'world/0:0' cannot be closed from thread "
                           r"'harness-rank-0' while a message from rank 1 is awaited or under way on it from thread 'waiter'"):
            sub.close()
        sent.set()
        waiter.join(20)
        rd.barrier(group=sub)
        sub.close()
        return got

    got, _ = run_ranks(2, rank)
    assert len(got) == 1 and np.array_equal(got[0], np.arange(4.0))
