"""Signals through shared memory: a shared-memory round's "my part is there" without a message.

Ranks as threads over real connections and real segments (the in-process harness), and real
processes where a rank is killed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist import shmsignal
from ringdist.settings import Settings
from ringdist.shm import slot_bytes

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, kill_one_mid_loop, run_launcher

pytestmark = pytest.mark.skipif(not shmsignal.supported(), reason="signals through shared memory need Linux on x86-64")
SHM = (("*", "shm"),)


def big_count(n: int) -> int:
    return slot_bytes(n) // 4 + 777  # float32s: more than a slot, so several rounds, each signalled


def _cases(n: int) -> list[tuple[str, np.ndarray]]:
    big = big_count(n)
    return [("all_gather", np.arange(5, dtype=np.float32)), ("all_gather", np.arange(big, dtype=np.float32)),
            ("all_sum", np.linspace(0, 1, 3001, dtype=np.float32)), ("all_sum", np.linspace(0, 1, big)),
            ("all_max", np.arange(1000, dtype=np.int64)), ("broadcast", np.arange(big, dtype=np.float32)),
            ("sum_scatter", np.arange(4 * n, dtype=np.float64)),
            ("gather", np.arange(7, dtype=np.int32)), ("gather", np.arange(big, dtype=np.float32))] + ([
            ("scatter", np.arange(3 * n, dtype=np.int16)), ("scatter", np.arange(n * big, dtype=np.float32)),
            ("all_to_all", np.arange(16 * n, dtype=np.float32)),  # one slot: the even path in place
            ("all_to_all", np.arange(n * (big // n + 1), dtype=np.float32))] if n <= 8 else [])  # several rounds


def _run(g: rd.Group, n: int) -> list[bytes]:
    out = []
    for op, base in _cases(n):
        x = base + g.rank() * 3
        if op == "broadcast":
            y = rd.broadcast(x, root=n - 1, group=g)
        elif op == "gather":
            y = rd.gather(x, root=1, group=g)
            y = np.zeros(0) if y is None else y
        elif op == "scatter":  # the root's 2-d array; the others learn its shape and dtype
            y = rd.scatter(x.reshape(n, -1) if g.rank() == n - 1 else None, root=n - 1, group=g)
        else:
            y = getattr(rd, op)(x, group=g)
        out.append(y.tobytes())
    return out


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_rounds_signal_through_memory_and_give_the_bits_of_tcp_signals(n):
    # 9 ranks: no mesh, so TCP signals are the dissemination barrier's rounds (and no shared-memory
    # scatter or all_to_all).
    def rank(g: rd.Group, want: bool) -> list[bytes]:
        assert g.shm is not None
        assert (g.shm.signals is not None) == want
        return _run(g, n)

    memory = run_ranks(n, lambda g: rank(g, True), algo=SHM)
    tcp = run_ranks(n, lambda g: rank(g, False), algo=SHM, shm_signals=False)
    assert memory == tcp
    for r in range(n):  # and they are right
        inputs = [np.arange(1000, dtype=np.int64) + q * 3 for q in range(n)]
        assert memory[r][4] == np.maximum.reduce(inputs).tobytes()
        rows = [np.arange(big_count(n), dtype=np.float32) + q * 3 for q in range(n)]
        assert memory[r][8] == (np.concatenate(rows).tobytes() if r == 1 else b"")  # the root's alone
        if n <= 8:  # scatter and all_to_all on shared memory need the mesh
            whole = (np.arange(n * big_count(n), dtype=np.float32) + (n - 1) * 3).reshape(n, -1)
            assert memory[r][10] == whole[r].tobytes()
            blocks = [np.arange(16 * n, dtype=np.float32) + q * 3 for q in range(n)]
            assert memory[r][11] == np.concatenate([b[r * 16:(r + 1) * 16] for b in blocks]).tobytes()


def test_one_rank_without_them_makes_every_rank_signal_over_tcp():
    def rank(g: rd.Group) -> tuple[bool, bytes]:
        return g.shm.signals is not None, rd.all_gather(np.full(3, g.rank()), group=g).tobytes()

    results = run_ranks(4, rank, algo=SHM, rank_overrides={2: {"shm_signals": False}})
    assert [on for on, _ in results] == [False] * 4
    assert len({data for _, data in results}) == 1


def test_the_setting_is_read_and_checked():
    assert Settings.from_env({"RINGDIST_SHM_SIGNALS": "0"}).shm_signals is False
    assert Settings.from_env({}).shm_signals is True
    with pytest.raises(rd.ConfigError, match="RINGDIST_SHM_SIGNALS='yes'"):
        Settings.from_env({"RINGDIST_SHM_SIGNALS": "yes"})


def _mismatches(n: int, rank, **options) -> list[str]:
    """Run `rank` on n ranks that disagree: every rank must raise MismatchError; their messages."""
    with pytest.raises(RankFailed) as info:
        run_ranks(n, rank, **options)
    errors = [f"{type(e).__name__}: {e}" for e in info.value.errors]
    assert all(e.startswith("MismatchError") for e in errors), errors
    return errors


def test_a_different_shape_is_a_mismatch_on_every_rank_naming_both_calls():
    def rank(g: rd.Group) -> None:
        rd.all_gather(np.ones(5 if g.rank() == 1 else 4, np.float32), group=g)

    errors = _mismatches(3, rank, algo=SHM)
    assert any("shape=(5,)" in e and "shape=(4,)" in e for e in errors), errors


def test_a_peer_in_a_tcp_call_that_sends_first_is_a_mismatch():
    # Rank 1 runs the direct path (its header goes over TCP); the others wait for its signal.
    def rank(g: rd.Group) -> None:
        rd.all_gather(np.ones(4, np.float32), group=g)

    errors = _mismatches(3, rank, algo=SHM, rank_overrides={1: {"algo": (("all_gather", "direct"),)}})
    assert any("chose different paths" in e for e in errors), errors


def test_a_peer_in_a_tcp_call_that_waits_first_is_a_mismatch_not_a_timeout():
    # Rank 1's broadcast (not the root) waits for rank 0 over TCP; rank 0 waits for rank 1's
    # signal. Neither would send: rank 0 sees rank 1's announced call instead.
    def rank(g: rd.Group) -> None:
        if g.rank() == 1:
            rd.broadcast(np.ones(4, np.float32), root=0, group=g)
        else:
            rd.all_gather(np.ones(4, np.float32), group=g)

    t0 = time.monotonic()
    errors = _mismatches(2, rank, algo=SHM, rank_overrides={1: {"algo": ()}}, timeout=30)
    assert time.monotonic() - t0 < 10  # the harness's timeout is 20 s
    assert any("all_gather" in e and "broadcast" in e for e in errors), errors


def test_a_peer_header_read_ahead_before_the_wait_is_a_mismatch_not_a_timeout():
    # Bytes read ahead (a peer's next header behind the last call's frames) are in the
    # channel's stage, where no poll sees them: the wait looks there before it sleeps. Rank 1's
    # all_to_all with splits announces the same op and path as rank 0's without, so only its
    # header (sent over TCP, then waited on) says they differ.
    def rank(g: rd.Group) -> None:
        if g.rank() == 0:
            ch = next(c for c in g.channels if c.peer == 1)
            deadline = time.monotonic() + 10
            while not ch.staged() and time.monotonic() < deadline:  # rank 1's header, read ahead
                ch.fill_stage()
                time.sleep(0.01)
            assert ch.staged(), "rank 1's header never came"
        rd.all_to_all(np.ones((2, 3)), splits=[1, 1] if g.rank() else None, group=g)

    t0 = time.monotonic()
    errors = _mismatches(2, rank, algo=SHM, timeout=30)
    assert time.monotonic() - t0 < 10  # the harness's timeout is 20 s
    assert any("all_to_all(shape=(any, 3), dtype=float64)" in e for e in errors), errors


def test_a_scatter_whose_ranks_disagree_on_the_root_is_a_mismatch_on_every_rank():
    def rank(g: rd.Group) -> None:
        root = 1 if g.rank() == 2 else 0
        rd.scatter(np.arange(12.0).reshape(3, 4) if g.rank() == root else None, root=root, group=g)

    errors = _mismatches(3, rank, algo=SHM)
    assert any("root=1" in e and "root=0" in e for e in errors), errors


def test_a_stalled_peer_is_a_timeout_naming_it():
    def rank(g: rd.Group) -> None:
        if g.rank() == 2:
            time.sleep(2.5)
        rd.all_sum(np.ones(1000), group=g, timeout=1.0)

    with pytest.raises(RankFailed) as info:
        run_ranks(3, rank, algo=SHM)
    errors = info.value.errors
    for r in (0, 1):
        assert isinstance(errors[r], rd.RingTimeoutError), errors
        assert "made no progress for 1 s" in str(errors[r]) and "rank 2" in str(errors[r]) \
            and "shared memory" in str(errors[r])
    assert isinstance(errors[2], rd.RingError)  # the ABORT, or its group already broken


def test_a_late_peer_wakes_the_sleeping_ranks_at_once(monkeypatch):
    # The others spin, then sleep in the kernel; the late rank's signal wakes them (its
    # eventfd), long before a sleep's slice runs out or the timeout. Slices of 5 s here: a
    # rank left to its slice would end seconds late.
    monkeypatch.setattr(shmsignal, "_SLICE_FIRST", 5.0)
    monkeypatch.setattr(shmsignal, "_SLICE_MOST", 5.0)
    came: dict[str, float] = {}
    lock = threading.Lock()

    def rank(g: rd.Group) -> bytes:
        rd.all_sum(np.ones(10), group=g)  # every rank past setup
        if g.rank() == 0:
            time.sleep(0.5)
            with lock:
                came["late"] = time.monotonic()
        out = rd.all_gather(np.full(100, g.rank(), np.float32), group=g).tobytes()
        with lock:
            came[f"done {g.rank()}"] = time.monotonic()
        return out

    results = run_ranks(4, rank, algo=SHM)
    assert len(set(results)) == 1
    late = came["late"]
    assert all(came[f"done {r}"] >= late for r in range(4))
    assert max(came[f"done {r}"] for r in range(4)) - late < 0.4, came


def test_kill_9_while_peers_wait_on_a_signal_reaches_every_rank():
    # long_loop.py's ranks loop over small all_gathers (10 KiB), each one signal through memory.
    kill_one_mid_loop(["-n", "4", str(SCRIPTS / "long_loop.py"), "all_gather", "0.01"], 4, 1,
                      {"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "*:shm"}, settle=0.3)


def test_signals_run_in_launched_jobs():
    res = run_launcher(["-n", "3", str(SCRIPTS / "shm_fds.py"), "200"], timeout=120,
                       env={"RINGDIST_ALGO": "*:shm"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("shm=True") == 3
