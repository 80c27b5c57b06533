"""Running ringdist-launch from tests: always with a timeout, never leaving a process behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "scripts"
HOSTFILES = ROOT / "hostfiles"
LAUNCHER = [sys.executable, "-m", "ringdist_launch"]
# A rank that only joins (python -c): prints "joined", or its RingError's type and text and exits 3.
JOINING_RANK = """
import ringdist as rd
try:
    rd.init()
except rd.RingError as exc:
    print(f"{type(exc).__name__}: {exc}")
    raise SystemExit(3)
print("joined")
"""


def require(ok: bool, reason: str) -> None:
    """Skip when the machine cannot run the test; under CI (or RINGDIST_REQUIRE_ROOT_TESTS=1) fail instead."""
    if ok:
        return
    if os.environ.get("CI") == "true" or os.environ.get("RINGDIST_REQUIRE_ROOT_TESTS") == "1":
        pytest.fail(f"{reason} (CI=true or RINGDIST_REQUIRE_ROOT_TESTS=1: this test must run)", pytrace=False)
    pytest.skip(reason)


def loopback_aliases() -> None:
    """Skip (fail under CI) unless 127.0.0.2-127.0.0.4 are this machine's, as the tests that stand
    them in for other hosts need (loopback-4.json): Linux has all of 127/8; macOS 127.0.0.1 alone."""
    import socket

    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, 0))
            except OSError:
                require(False, f"{ip} is not on the loopback interface (macOS: sudo ifconfig lo0 alias {ip} up)")


def run_launcher(
    args: Sequence[str],
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `ringdist-launch args...` to completion (text output); fail the test after `timeout` s."""
    proc = start_launcher(args, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(
            f"ringdist-launch {' '.join(args)} did not finish in {timeout}s\n"
            f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
        ) from None
    finally:
        kill_tree(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_launcher(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[str]:
    """Start `ringdist-launch args...` in its own session with piped text output."""
    return subprocess.Popen(
        [*LAUNCHER, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        start_new_session=True,
    )


def kill_tree(popen: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher, every process descending from it and their process groups; reap it.

    A launcher that has already exited is left alone: its pid may belong to someone else now.
    """
    if popen.poll() is not None:
        return
    for pid in descendants(popen.pid):
        _kill_group_of(pid)
        _signal(pid, signal.SIGKILL)
    _kill_group_of(popen.pid)
    _signal(popen.pid, signal.SIGKILL)
    try:
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_until_gone(pids: Sequence[int], timeout: float = 10) -> list[int]:
    """Poll until none of `pids` is alive; return those still alive at `timeout`."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def kill_one_mid_loop(args: Sequence[str], n: int, victim: int, env: Mapping[str, str], *,
                      on_start: Any = None, on_ready: Any = None, settle: float = 0.2) -> dict[int, int]:
    """Launch `ringdist-launch --grace 10 args...` (a job of n ranks whose script, such as
    long_loop.py, prints `ready pid=<pid>` on each rank once looping), kill rank `victim` with SIGKILL once all are ready, and check that every other
    rank raised within 5 s and that every rank's process is gone. `on_start(out)` reads the
    output first, `on_ready(pids)` looks at the ranks before the kill. Returns the pids."""
    proc = start_launcher(["--grace", "10", *args], env=env)
    try:
        out = LineReader(proc.stdout)
        if on_start is not None:
            on_start(out)
        found = out.wait_for(r"^\[(\d+)\] ready pid=(\d+)$", count=n, timeout=90)
        pids = {int(m.group(1)): int(m.group(2)) for m in found}
        if on_ready is not None:
            on_ready(pids)
        time.sleep(settle)
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=60)
        text = out.rest()
    finally:
        kill_tree(proc)
    assert_raised_after_kill(text, [r for r in range(n) if r != victim], killed_at)
    assert not wait_until_gone(list(pids.values()), timeout=10)
    return pids


def assert_raised_after_kill(text: str, ranks: Sequence[int], killed_at: float, within: float = 5.0) -> None:
    """Exactly `ranks` printed long_loop.py's `raised <Type> at <time>:` line, each within
    `within` seconds of the kill at `killed_at`."""
    raised = {int(r): float(t) for r, t in re.findall(r"^\[(\d+)\] raised \w+ at ([\d.]+):", text, re.M)}
    assert sorted(raised) == sorted(ranks), text
    assert all(t - killed_at < within for t in raised.values()), {r: round(t - killed_at, 2) for r, t in raised.items()}


def assert_strangers_get_no_descriptor(ep: Any, address: str, gid: str) -> None:
    """Garbage, and a well-formed HELLO under another job's secret, sent to endpoint `ep`'s local
    socket at `address`: both refused without a file descriptor, and counted as refusals."""
    import socket

    from ringdist import wire

    refused = ep.refused
    for attempt in (b"garbage" * 20, None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address)
        if attempt is None:
            hello = wire.make_hello(wire.job_id(b"wrong secret"), gid, 1, "shm", 0, os.urandom(wire.NONCE_SIZE))
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


class LineReader:
    """Collects a text pipe's lines in a thread, so tests can wait for a line with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[re.Match[str]]:
        """Read until `count` lines in all match `pattern`; AssertionError on timeout or EOF."""
        regex = re.compile(pattern)
        matches = [m for m in map(regex.search, self.lines) if m]
        deadline = time.monotonic() + timeout
        while len(matches) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                got = "".join(self.lines)
                raise AssertionError(f"wanted {count} lines matching {pattern!r}, got:\n{got}")
            self.lines.append(line)
            match = regex.search(line)
            if match:
                matches.append(match)
        return matches

    def rest(self, timeout: float = 10) -> str:
        """Everything read so far plus the rest of the pipe, up to its end or `timeout`."""
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def descendants(root: int) -> list[int]:
    """Every live descendant of `root`, found through /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group_of(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != os.getpgrp():
        _signal(-pgid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def count_bytecodes(fn: Callable[[], Any]) -> int:
    """Bytecodes run by `fn()` on this thread (sys.settrace opcode events): the Python work of a
    call, a measure load on a shared machine cannot move."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def serve_handshake(sock: Any, secret: bytes, job: str, deadline: float) -> dict[str, Any]:
    """The accepting side of a handshake (`ringdist.handshake.ServerHandshake`, which the acceptor
    feeds in its selector) run on one blocking socket: the verified HELLO fields. A refusal's
    REJECT is sent before its AuthError is raised."""
    from ringdist.channel import recv_exact, send_blocking
    from ringdist.errors import AuthError, PeerLostError, RingTimeoutError
    from ringdist.handshake import ServerHandshake

    hs = ServerHandshake(secret, job)

    def flush() -> None:
        if hs.outgoing:
            data = bytes(hs.outgoing)
            hs.outgoing.clear()
            send_blocking(sock, data, deadline)

    try:
        while not hs.done:
            hs.feed(recv_exact(sock, hs.want(), deadline))
            flush()
    except AuthError:
        try:
            flush()
        except (PeerLostError, RingTimeoutError):
            pass
        raise
    flush()
    assert hs.hello is not None
    return hs.hello
