"""The shared-memory link's portable backend (RINGDIST_SHM=posix; automatic where Linux's memfd
and abstract sockets are missing): its collectives bit for bit, its names (a POSIX shared memory
name unlinked at once, a socket file in a 0700 directory) and what is left of them after a
normal end, an endpoint's close, interpreter exit, a fork, and a kill -9."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ringdist as rd
from ringdist import posixshm, wire
from ringdist.settings import Settings
from ringdist.shm import slot_bytes

from harness import SECRET, run_ranks
from helpers import (LineReader, SCRIPTS, assert_strangers_get_no_descriptor, kill_one_mid_loop, kill_tree,
                     run_launcher, start_launcher, wait_until_gone)

pytestmark = pytest.mark.skipif(not posixshm.available(), reason="no POSIX shared memory on this system")
SHM = (("*", "shm"),)
POSIX = {"RINGDIST_SHM": "posix"}
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm, or needs memfd")


def _input(r: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(r)
    return (rng.standard_normal(count) * 100).astype(dtype) if dtype[0] == "f" else rng.integers(-9, 9, count).astype(dtype)


def _segments_mapped(job: str) -> list[str]:
    """This process's mappings of the portable backend's segments of job `job`, as /proc shows them."""
    with open("/proc/self/maps") as f:
        return [line for line in f if f"/dev/shm{posixshm.SEGMENT_PREFIX}{job[:8]}" in line]


@pytest.mark.parametrize("n", [2, 4])
def test_the_portable_backend_matches_numpy_bit_for_bit(n):
    # Small and several-slot sizes of every shm collective, with the portable backend forced.
    big = slot_bytes(n) // 4 + 1001  # float32 elements: more than a slot, so several rounds
    cases = [("all_gather", "float32", 7), ("all_gather", "float64", big), ("all_sum", "float32", 3001),
             ("all_sum", "float32", big), ("all_sum", "int64", big), ("all_max", "int32", 1000),
             ("sum_scatter", "float32", big // n * n), ("broadcast", "float32", big), ("broadcast", "int16", 9),
             ("all_to_all", "float32", 4 * n), ("all_to_all", "float64", big // n * n)]

    def rank(g: rd.Group) -> tuple:
        out = []
        for op, dtype, count in cases:
            x = _input(g.rank(), count, dtype)
            out.append(rd.broadcast(x, root=n - 1, group=g) if op == "broadcast" else getattr(rd, op)(x, group=g))
        return g.endpoint.local_backend, g.shm is not None, out

    results = run_ranks(n, rank, algo=SHM, shm_backend="posix")
    assert [(backend, shm) for backend, shm, _ in results] == [("posix", True)] * n
    for i, (op, dtype, count) in enumerate(cases):
        inputs = [_input(r, count, dtype) for r in range(n)]
        if op == "all_gather":
            want = [np.concatenate(inputs)] * n
        elif op == "broadcast":
            want = [inputs[-1]] * n
        elif op == "all_to_all":
            c = count // n
            want = [np.concatenate([x[r * c:(r + 1) * c] for x in inputs]) for r in range(n)]
        else:
            acc = inputs[0].copy()
            for x in inputs[1:]:  # rank order, as the shm reductions fold
                (np.maximum if op == "all_max" else np.add)(acc, x, out=acc)
            c = count // n
            want = [acc[r * c:(r + 1) * c] for r in range(n)] if op == "sum_scatter" else [acc] * n
        for r in range(n):
            got = results[r][2][i]
            assert got.dtype == want[r].dtype and got.tobytes() == want[r].tobytes(), (op, dtype, count, r)


@LINUX
def test_segments_are_mapped_with_their_names_already_gone():
    # Every rank maps every rank's segment (4 x 4 mappings in this one process), each a POSIX
    # shared memory object whose name the kernel reports deleted: nothing in /dev/shm.
    job = wire.job_id(SECRET)

    def rank(g: rd.Group) -> list[str]:
        rd.barrier(group=g)
        lines = _segments_mapped(job)
        rd.barrier(group=g)
        return lines

    lines = run_ranks(4, rank, shm_backend="posix")[0]
    assert len(lines) == 16, lines
    assert all(line.rstrip().endswith("(deleted)") for line in lines), lines
    assert _segments_mapped(job) == []  # and unmapped once the groups closed


def test_the_socket_sits_in_a_private_directory_removed_when_the_endpoint_closes():
    def rank(g: rd.Group) -> tuple:
        path = g.endpoint.local_path
        return path, stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), stat.S_ISSOCK(os.stat(path).st_mode)

    results = run_ranks(2, rank, shm_backend="posix")
    for path, mode, is_socket in results:
        assert mode == 0o700 and is_socket, (path, oct(mode))
        assert not os.path.exists(os.path.dirname(path)), path  # the harness closed the endpoints


def test_a_stranger_on_the_socket_file_gets_no_memory():
    # The same handshake as on TCP: garbage, and a well-formed HELLO under another job's
    # secret, are refused without a descriptor; the job goes on over shared memory.
    def rank(g: rd.Group) -> float:
        if g.rank() == 0:
            assert_strangers_get_no_descriptor(g.endpoint, g.endpoint.local_path, g.gid)
        rd.barrier(group=g)
        return float(rd.all_sum(np.ones(1 << 17, np.float32), group=g, timeout=20)[0])

    assert run_ranks(2, rank, algo=SHM, shm_backend="posix") == [2.0, 2.0]


def test_a_rank_that_cannot_make_its_segment_sends_the_whole_group_to_tcp(monkeypatch):
    # As with no room in /dev/shm: rank 1 votes no (it does not fail the group's setup), and
    # every rank, rank 1 included, works over TCP with the same results.
    make = posixshm.make_segment

    def make_segment(size, label, job):
        if label.startswith("rank 1 "):
            raise rd.ConnectError(f"{label}: cannot create shared memory: No space left on device")
        return make(size, label, job)
    monkeypatch.setattr(posixshm, "make_segment", make_segment)

    def rank(g: rd.Group) -> tuple:
        return g.shm is not None, rd.all_sum(np.full(1 << 16, g.rank(), np.int64), group=g)

    results = run_ranks(3, rank, shm_backend="posix")
    assert [shm for shm, _ in results] == [False] * 3
    assert all((total == 3).all() for _, total in results)


def test_ringdist_shm_posix_is_read_and_a_bad_value_is_a_clear_error():
    assert Settings.from_env({"RINGDIST_SHM": "posix"}).shm_backend == "posix"
    assert Settings.from_env({"RINGDIST_SHM": "posix"}).shm is True
    assert Settings.from_env({}).shm_backend == "auto"
    with pytest.raises(rd.ConfigError, match=r"RINGDIST_SHM='posx' must be 0 .*, 1 .* or posix"):
        Settings.from_env({"RINGDIST_SHM": "posx"})
    # The launcher refuses it before starting any rank, in one line naming the variable.
    res = run_launcher(["-n", "2", "--env", "RINGDIST_SHM=POSIX", str(SCRIPTS / "shm_posix.py"), "once"], timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert re.fullmatch(r"ringdist-launch: error: --env: RINGDIST_SHM='POSIX' must be [^\n]*\n", res.stderr), res.stderr
    assert res.stdout == ""


def test_a_launched_job_leaves_no_socket_directory_after_a_normal_end():
    res = run_launcher(["-n", "2", str(SCRIPTS / "shm_posix.py"), "once"], env=POSIX, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.findall(r"^\[\d\] backend=posix shm=True job=\w+ socket=(\S+) dir=0o700$", res.stdout, re.M)
    assert len(found) == 2 and len(re.findall(r"sum ok", res.stdout)) == 2, res.stdout
    job_dirs = {os.path.dirname(os.path.dirname(path)) for path in found}
    assert len(job_dirs) == 1, found  # the launcher's one directory for the job
    assert not any(os.path.exists(p) for p in [*job_dirs, *found]), found


def test_kill_9_of_the_launcher_leaves_no_socket_directory():
    # The launcher's own cleanup never runs: its guard, which kills the ranks, removes the directory.
    proc = start_launcher(["-n", "2", str(SCRIPTS / "shm_posix.py"), "loop", "0.01"],
                          env={**POSIX, "PYTHONUNBUFFERED": "1"})
    try:
        out = LineReader(proc.stdout)
        found = [m.group(1) for m in out.wait_for(r"^\[\d\] backend=posix shm=True job=\w+ socket=(\S+) dir=0o700$",
                                                  count=2, timeout=60)]
        pids = [int(m.group(1)) for m in out.wait_for(r"^\[\d\] ready pid=(\d+)$", count=2, timeout=60)]
        job_dir = os.path.dirname(os.path.dirname(found[0]))
        assert os.path.isdir(job_dir)
        os.kill(proc.pid, 9)
        proc.wait(10)
        assert not wait_until_gone(pids, 10), pids
        deadline = time.monotonic() + 10
        while os.path.exists(job_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(job_dir), os.listdir(job_dir)
    finally:
        kill_tree(proc)


def test_kill_9_of_the_launcher_as_it_makes_the_socket_directory_leaves_nothing():
    # Killed as soon as the directory appears, before any rank runs: the guard was started first
    # and told of the directory before it is made (made before the guard, it was left behind 2
    # times in 3; told just after it was made, a launcher killed in between left it: 1 full run
    # in 3 of another machine's).
    # A TMPDIR of its own, short enough for the socket files (pytest's tmp_path may not be).
    tmp_path = Path(tempfile.mkdtemp(prefix="rdt-", dir="/tmp"))
    proc = start_launcher(["-n", "2", str(SCRIPTS / "shm_posix.py"), "loop", "0.01"],
                          env={**POSIX, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        made: list[str] = []
        while not made and proc.poll() is None and time.monotonic() < deadline:
            made = [name for name in os.listdir(tmp_path) if name.startswith("rd-")]
        assert made, "the launcher made no socket directory"
        os.kill(proc.pid, 9)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(tmp_path / made[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(tmp_path / made[0])
    finally:
        kill_tree(proc)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_tmpdir_too_long_for_socket_files_puts_them_under_tmp():
    # macOS allows 103 bytes in a socket file's path, and its $TMPDIR is long already: with 90
    # characters of TMPDIR every bind failed and the job quietly used TCP.
    long_dir = Path(tempfile.mkdtemp(prefix="rdt-", dir="/tmp")) / ("d" * 80)
    long_dir.mkdir()
    try:
        res = run_launcher(["-n", "2", str(SCRIPTS / "shm_posix.py"), "once"], env={**POSIX, "TMPDIR": str(long_dir)},
                           timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        found = re.findall(r"^\[\d\] backend=posix shm=True job=\w+ socket=(/tmp/rd-\w+/rd\w{24}/s) dir=0o700$",
                           res.stdout, re.M)
        assert len(found) == 2 and len(re.findall(r"sum ok", res.stdout)) == 2, res.stdout
        assert not any(os.path.exists(os.path.dirname(os.path.dirname(p))) for p in found), found
        assert os.listdir(long_dir) == []
    finally:
        shutil.rmtree(long_dir.parent, ignore_errors=True)


@LINUX
def test_ranks_with_different_backends_all_use_tcp():
    # Rank 1 forces the portable backend, ranks 0 and 2 pick memfd: no rank finds the others'
    # sockets, and every rank, not some, goes without shared memory.
    res = run_launcher(["-n", "3", str(SCRIPTS / "shm_posix.py"), "rank1-posix"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    backends = re.findall(r"^\[(\d)\] backend=(\w+) shm=False ", res.stdout, re.M)
    assert sorted(backends) == [("0", "memfd"), ("1", "posix"), ("2", "memfd")], res.stdout
    assert len(re.findall(r"sum ok", res.stdout)) == 3


@LINUX
@pytest.mark.parametrize("n", [4, 9])
def test_kill_9_mid_operation_over_the_portable_backend_reaches_every_rank_and_leaves_nothing(n):
    # 9 ranks: no mesh, the signals go in dissemination rounds; blocks of more than one slot.
    victim = n // 2
    mib = "4" if n <= 8 else "0.5"
    seen: dict[str, Any] = {}

    def started(out: LineReader) -> None:
        info = out.wait_for(r"^\[(\d)\] backend=posix shm=True job=(\w+) socket=(\S+) dir=0o700$", count=n, timeout=90)
        seen["job"], seen["sockets"] = info[0].group(2), [m.group(3) for m in info]

    def mapped(pids: dict[int, int]) -> None:
        with open(f"/proc/{pids[0]}/maps") as f:
            lines = [line for line in f if f"/dev/shm{posixshm.SEGMENT_PREFIX}{seen['job'][:8]}" in line]
        assert len(lines) == n and all(line.rstrip().endswith("(deleted)") for line in lines), lines

    kill_one_mid_loop(["-n", str(n), str(SCRIPTS / "shm_posix.py"), "loop", mib], n, victim,
                      {**POSIX, "RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "*:shm"}, on_start=started, on_ready=mapped)
    job, sockets = seen["job"], seen["sockets"]
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(posixshm.SEGMENT_PREFIX[1:] + job[:8])]
    # The killed rank's socket file, and the directories of all: gone with the launcher's job directory.
    job_dir = os.path.dirname(os.path.dirname(sockets[victim]))
    assert not os.path.exists(job_dir), os.listdir(job_dir)


ENDPOINT_AT_EXIT = """
import os, sys
from ringdist.endpoint import Endpoint
ep = Endpoint(b"exit secret", ["127.0.0.1"], connect_timeout=5, local="posix")
print(ep.local_path, flush=True)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a forked child's exit (atexit runs) leaves the parent's socket alone
os.waitpid(pid, 0)
print(os.path.exists(ep.local_path), flush=True)
sys.exit(0)  # the endpoint never closed: removed at interpreter exit
"""


def test_a_socket_file_not_closed_is_removed_at_exit_but_not_by_a_forked_child():
    res = subprocess.run([sys.executable, "-c", ENDPOINT_AT_EXIT], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    path, child_left_it = res.stdout.split()
    assert child_left_it == "True", res.stdout
    assert path.endswith("/s") and not os.path.exists(os.path.dirname(path)), path


def test_a_segment_the_file_system_has_no_room_for_is_refused_when_made(monkeypatch):
    # A full /dev/shm: the rank votes for TCP at once (a sparse segment would fail at its first write, SIGBUS).
    import errno

    from ringdist import posixshm
    from ringdist.errors import ConnectError
    if not hasattr(os, "posix_fallocate") or not posixshm.available():
        pytest.skip("no posix_fallocate here")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ConnectError, match=r"rank 3: cannot map 8192 bytes of shared memory: No space left on device"):
        posixshm.make_segment(8192, "rank 3", "0123456789abcdef")
