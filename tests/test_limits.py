"""Timeouts of any size, `inf` included, and settings refused with an error that names them."""

from __future__ import annotations

import math
import re
import sys
import threading
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist import deadlines
from ringdist.settings import Settings

from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


@pytest.mark.parametrize("timeout", ["inf", "1e10", "3e6"])
def test_a_long_or_unlimited_timeout_argument_waits_as_long_as_needed(timeout):
    res = run_launcher(["-n", "3", str(SCRIPTS / "long_timeouts.py"), timeout], timeout=90, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] ok" in res.stdout


@pytest.mark.parametrize("variable", ["RINGDIST_TIMEOUT", "RINGDIST_CONNECT_TIMEOUT", "RINGDIST_INIT_TIMEOUT"])
def test_unlimited_timeouts_in_the_environment(variable):
    env = {**FAST, variable: "inf", "RINGDIST_BUFFER_CACHE_MB": "inf", "RINGDIST_SPIN_US": "inf"}
    res = run_launcher(["-n", "3", str(SCRIPTS / "long_timeouts.py"), "default"], timeout=90, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] ok" in res.stdout


def test_spinning_never_outlasts_the_timeout():
    """RINGDIST_SPIN_US=1e9 (1000 s of spinning) with a 1 s timeout: the stalled call fails on time."""
    res = run_launcher(["-n", "2", str(SCRIPTS / "stalled_call.py"), "1"], timeout=60,
                       env={**FAST, "RINGDIST_SPIN_US": "1e9"})
    assert res.returncode == 3, res.stdout + res.stderr
    found = re.search(r"\[0\] timed out after ([0-9.]+) s: .*made no progress for 1 s", res.stdout)
    assert found, res.stdout + res.stderr
    assert float(found.group(1)) < 6, found.group(0)  # rank 1 stalls 8 s; spinning 1000 s would outlast it


@pytest.mark.parametrize("name, bad", [
    ("RINGDIST_SOCKET_BUFFERS", "99999999999999999999,1"),
    ("RINGDIST_SOCKET_BUFFERS", "1,4294967296"),
    ("RINGDIST_SOCKET_BUFFERS", "١,2"),  # a digit, but not an ASCII one
    ("RINGDIST_LANES", "inf"),
    ("RINGDIST_DIRECT_MAX", "inf"),
    ("RINGDIST_TIMEOUT", "nan"),
    ("RINGDIST_TIMEOUT", "-inf"),
    ("RINGDIST_SPIN_US", "nan"),
    ("RINGDIST_BUFFER_CACHE_MB", "nan"),
    ("RINGDIST_CONNECT_TIMEOUT", "0"),
])
def test_bad_settings_are_a_config_error_naming_the_variable(name, bad):
    with pytest.raises(rd.ConfigError, match=name):
        Settings.from_env({name: bad})


def test_unlimited_settings_are_accepted():
    s = Settings.from_env({"RINGDIST_TIMEOUT": "inf", "RINGDIST_CONNECT_TIMEOUT": "inf",
                           "RINGDIST_INIT_TIMEOUT": "inf", "RINGDIST_BUFFER_CACHE_MB": "inf",
                           "RINGDIST_SPIN_US": "inf"})
    assert (s.timeout, s.connect_timeout, s.init_timeout, s.buffer_cache_mb, s.spin_us) == (math.inf,) * 5


def test_waits_are_cut_into_slices_the_kernel_accepts():
    def off_the_main_thread() -> list:
        return [deadlines.poll_ms(math.inf), deadlines.poll_ms(1e10), deadlines.thread_wait(math.inf),
                deadlines.socket_wait(math.inf), deadlines.socket_wait(time.monotonic() + 1e10)]

    got: list = []
    helper = threading.Thread(target=lambda: got.extend(off_the_main_thread()))
    helper.start()
    helper.join()
    assert got == [deadlines.MAX_WAIT * 1000, deadlines.MAX_WAIT * 1000, deadlines.MAX_WAIT, None, deadlines.MAX_WAIT]
    # On the main thread a wait looks every MAIN_THREAD_WAIT: a signal the kernel gives another
    # thread has its handler (Ctrl-C's KeyboardInterrupt) run there within that.
    main = deadlines.MAIN_THREAD_WAIT
    assert deadlines.poll_ms(math.inf) == main * 1000 == 100
    assert deadlines.thread_wait(math.inf) == main and deadlines.thread_wait(0.05) == 0.05
    assert deadlines.socket_wait(math.inf) == main == deadlines.socket_wait(time.monotonic() + 1e10)
    assert deadlines.poll_ms(0.0004) == 1 and deadlines.poll_ms(-1) == 0
    assert deadlines.after(math.inf) == math.inf and deadlines.left(math.inf) == math.inf
    with pytest.raises(TimeoutError):
        deadlines.socket_wait(time.monotonic() - 1)


@pytest.mark.parametrize("args, named", [
    (["--env", "RINGDIST_SOCKET_BUFFERS=99999999999999,1"], "RINGDIST_SOCKET_BUFFERS"),
    (["--env", "RINGDIST_TIMEOUT=soon"], "RINGDIST_TIMEOUT"),
    (["--grace", "3000000"], "--grace"),
    (["--grace", "inf"], "--grace"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
])
def test_the_launcher_refuses_bad_settings_in_one_line(args, named):
    res = run_launcher(["-n", "2", *args, str(SCRIPTS / "exit_code.py"), "-1", "0", "0"], timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert named in lines[-1] and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("args", [["--timeout", "3000000"], ["--timeout", "inf"], ["--grace", "86400"]])
def test_the_launcher_takes_long_limits(args):
    res = run_launcher(["-n", "2", *args, str(SCRIPTS / "exit_code.py"), "-1", "0", "0"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def _limited(soft: int, hard: int):
    import resource

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_limit


def test_a_launcher_without_files_enough_for_its_ranks_says_so_at_once(tmp_path):
    # It once served the rendezvous through "Too many open files" for half a minute, then blamed a rank.
    import subprocess
    import sys
    script = tmp_path / "job.py"
    script.write_text("import ringdist as rd\nrd.init()\n")
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "ringdist_launch", "-n", "32", str(script)], capture_output=True,
                         text=True, timeout=60, preexec_fn=_limited(60, 60))
    assert time.monotonic() - started < 20
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"ringdist-launch: error: 32 ranks need about \d+ open files in the launcher .* and it may "
                     r"open 60 \(`ulimit -n`", res.stderr), res.stderr


def test_ranks_raise_their_soft_limit_on_open_files_as_far_as_the_hard_one(tmp_path):
    # 64 ranks hold about 130 files a group: a soft limit of 1024 runs out at the eighth group.
    import subprocess
    import sys
    script = tmp_path / "job.py"
    script.write_text("import resource\nimport ringdist as rd\nrd.init()\n"
                      "print('limit', *resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    res = subprocess.run([sys.executable, "-m", "ringdist_launch", "-n", "2", str(script)], capture_output=True,
                         text=True, timeout=60, preexec_fn=_limited(200, 3000))
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(re.findall(r"^\[(\d)\] limit (\d+) (\d+)$", res.stdout, re.M)) == [("0", "3000", "3000"),
                                                                                      ("1", "3000", "3000")], res.stdout


def test_a_wait_for_a_connection_says_when_this_rank_could_not_accept_for_want_of_files():
    from ringdist.endpoint import Endpoint, InboxKey
    from ringdist.errors import RingTimeoutError
    ep = Endpoint(b"secret", ["127.0.0.1"], connect_timeout=5, label="rank 3")
    try:
        ep._acceptor.out_of_fds = (time.monotonic(), "Too many open files")
        with pytest.raises(RingTimeoutError, match=r"rank 3: waiting for rank 1: no connection arrived in time; this "
                                                   r"rank could not accept connections: Too many open files \(out of "
                                                   r"file descriptors: (\d+ open, )?limit \d+; raise `ulimit -n`\)"):
            ep.take(InboxKey("world", 1, "ring", 0), time.monotonic() + 0.2, "waiting for rank 1")
    finally:
        ep.close()


def test_out_of_file_descriptors_a_dial_fails_at_once_naming_the_limit():
    # It was dialed again and again until RINGDIST_CONNECT_TIMEOUT, then blamed the peer
    # ("cannot reach rank 0: Too many open files (65 attempts)"); a local socket's dial let a
    # bare OSError out.
    import subprocess
    import sys
    code = """
import os, resource, time
from ringdist import channel
from ringdist.endpoint import Endpoint, InboxKey
from ringdist.errors import ConnectError
a = Endpoint(b"s", ["127.0.0.1"], connect_timeout=30, label="rank 0")
b = Endpoint(b"s", ["127.0.0.1"], connect_timeout=30, label="rank 1")
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))
for dial in (lambda: b.connect(a.addresses, InboxKey("world", 1, "p2p", 0), time.monotonic() + 30,
                               "rank 0 of group 'world'", up=True),
             lambda: channel.dial_local("ringdist-nobody", 5)):
    try:
        dial()
    except ConnectError as exc:
        print(type(exc).__name__, getattr(exc, "out_of_fds", None), exc)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout + res.stderr
    assert re.fullmatch(r"ConnectError None rank 1: cannot dial rank 0 of group 'world': 127\.0\.0\.1:\d+: Too many "
                        r"open files \(this process: (\d+ open, )?limit \d+; raise `ulimit -n`\)", lines[0]), lines[0]
    assert re.fullmatch(r"ConnectError True local socket ringdist-nobody: Too many open files \(this process: "
                        r"(\d+ open, )?limit \d+; raise `ulimit -n`\)", lines[1]), lines[1]


def test_no_descriptor_for_a_wake_up_pipe_is_a_ring_error_and_the_group_goes_on():
    # The threads of non-blocking calls and of messages to itself each make a pipe on first use:
    # with no descriptor left, that was a bare OSError out of the call.
    import subprocess
    code = """
import os, resource, numpy as np, ringdist as rd
rd.init()
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))
for call in (lambda: rd.all_sum(np.arange(3), async_op=True), lambda: rd.send(np.arange(3), 0, async_op=True),
             lambda: rd.send_object({}, 0)):
    try:
        call()
    except rd.RingError as exc:
        print(type(exc).__name__, exc)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
print(rd.all_sum(np.arange(3), async_op=True).wait().tolist())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and len(lines) == 4, res.stdout + res.stderr
    why = r"cannot make a wake-up pipe: Too many open files \(this process: (\d+ open, )?limit \d+; raise `ulimit -n`\)"
    assert re.fullmatch(rf"RingError rank 0: all_sum: {why}", lines[0]), lines[0]
    assert all(re.fullmatch(rf"RingError the thread of messages a rank sends itself: {why}", line)
               for line in lines[1:3]), lines
    assert lines[3] == "[0, 1, 2]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads resident memory from /proc")
def test_a_connection_s_staging_buffer_takes_memory_only_as_it_is_used():
    # Each connection's 256 KiB staging buffer was zero-filled, so resident: at 64 ranks a rank
    # with a connection to every peer each way held 32 MB more.
    import socket
    from ringdist import channel

    def resident_kib() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("RssAnon")).split()[1])

    listener = socket.create_server(("127.0.0.1", 0))
    socks = [socket.create_connection(listener.getsockname()) for _ in range(40)]
    try:
        before = resident_kib()
        chans = [channel.Channel(s, me=0, peer=1, group="g", role="ring") for s in socks]
        grew = resident_kib() - before
        assert grew < 40 * 32, f"{grew} KiB for 40 connections"
        for ch in chans:
            ch.close()
    finally:
        listener.close()
        for s in socks:
            s.close()


def test_the_buffer_cache_default_shares_a_quarter_of_the_memory_among_the_local_ranks(monkeypatch):
    # 1 GiB of idle buffers per rank whatever the ranks per host: 64 ranks could keep 64 GiB idle.
    from ringdist import settings
    from ringdist.settings import Settings
    sizes = {"SC_PHYS_PAGES": (32 << 30) // 4096, "SC_PAGE_SIZE": 4096}  # 32 GiB
    monkeypatch.setattr(settings.os, "sysconf", lambda name: sizes[name])
    got = [Settings.from_env({"RINGDIST_LOCAL_WORLD_SIZE": str(n)}).buffer_cache_mb for n in (1, 8, 16, 64, 256)]
    assert got == [1024, 1024, 512, 128, 64]
    assert Settings.from_env({}).buffer_cache_mb == 1024
    assert Settings.from_env({"LOCAL_WORLD_SIZE": "64", "RINGDIST_BUFFER_CACHE_MB": "2048"}).buffer_cache_mb == 2048


def test_blocks_past_the_largest_frame_go_in_several_frames_on_the_direct_paths(monkeypatch):
    # A frame's length is 32 bits: the direct paths sent a block as one DATA frame, and one of
    # 4 GiB raised struct.error (below 4 GiB a 3 GiB frame kept an ABORT waiting behind it).
    # With the largest frame made 256 KiB, 1 MiB blocks go in frames of it, and arrive whole.
    from ringdist import engine, flows, wire
    from harness import run_ranks

    limit = 256 * 1024
    monkeypatch.setattr(flows, "MAX_FRAME", limit)
    monkeypatch.setattr(engine, "MAX_FRAME", limit)
    single, whole = [], engine.intro  # the blocks that go as one frame

    def intro(header, n):
        single.append(n)
        return whole(header, n)

    monkeypatch.setattr(engine, "intro", intro)
    m = (1 << 20) + 3

    def rank(g):
        r, n = g.rank(), g.size()
        x = (np.arange(m * n, dtype=np.int64) * (r + 1)).astype(np.uint8)
        gathered = rd.gather(x[:m], 0, group=g)
        scattered = rd.scatter(x if r == 0 else None, 0, group=g)
        exchanged = rd.all_to_all(x, group=g)
        return gathered, scattered, exchanged

    got = run_ranks(2, rank, shm=False)
    blocks = [(np.arange(m * 2, dtype=np.int64) * (q + 1)).astype(np.uint8) for q in range(2)]
    assert np.array_equal(got[0][0], np.concatenate([b[:m] for b in blocks]))
    for r in range(2):
        assert np.array_equal(got[r][1], blocks[0][r * m:(r + 1) * m])
        assert np.array_equal(got[r][2], np.concatenate([blocks[q][r * m:(r + 1) * m] for q in range(2)]))
    assert single and max(single) <= limit  # (the small exchanges still go whole)
    with pytest.raises(rd.ProtocolError, match="a frame of 4294967296 bytes"):
        wire.encode_prefix(wire.DATA, 1 << 32)


def test_no_step_of_a_large_broadcast_spins(monkeypatch):
    # Waits for more than SPIN_MAX_BYTES wait on bandwidth and never spin; a ring broadcast's root
    # (it only sends) and its acknowledgement back along the chain (no bytes of its own) spun at 16 MiB.
    from harness import run_ranks
    from ringdist import comm, engine

    spins = []
    real = engine.run

    def recorded(*args, **kwargs):
        spins.append((kwargs.get("op"), kwargs.get("spin", 0.0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run", recorded)
    n = 3
    big = comm.SPIN_MAX_BYTES * 4 // 8  # float64 elements: 4x the limit in bytes

    def rank(g):
        x = np.arange(big, dtype=np.float64) if g.rank() == 0 else np.empty(big)
        return float(rd.broadcast(x, root=0, group=g)[-1])

    assert run_ranks(n, rank, shm=False, algo=(("broadcast", "ring"),), spin_us=500.0) == [big - 1.0] * n
    steps = [spin for op, spin in spins if op == "broadcast"]
    assert len(steps) >= 2 * n - 2 and not any(steps), spins  # (every rank's chain step and acknowledgement)
