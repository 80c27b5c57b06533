"""Strangers holding connections open never cost a real peer its connection.

A stranger in the test process holds 1,000 idle connections (most silent, some with
part of a HELLO, some owing their PROOF) to every listening port of a job: the
launcher's rendezvous and each rank's port, found through /proc. Whatever the ranks'
acceptors drop, the stranger opens again, so the flood lasts through init, a split,
the first point-to-point send and steady-state collectives. The rendezvous is also
tested alone: idle floods, wrong-job floods, and running out of file descriptors.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import SCRIPTS, LineReader, kill_tree, start_launcher
from ringdist import wire
from ringdist.channel import recv_control, send_blocking
from ringdist.handshake import client_handshake
from ringdist.rendezvous import RENDEZVOUS_GROUP, encode, parse_address

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds ports and counts fds in /proc")

HELD = 1000  # connections the stranger holds open to each port
FAST = {"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "20"}


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the stranger needs {need} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process `pid` listens on (IPv4), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ip_hex, port_hex = fields[1].split(":")
            ip = socket.inet_ntoa(int(ip_hex, 16).to_bytes(4, "little"))
            found.append((ip, int(port_hex, 16)))
    return found


def wait_listening(pid: int, timeout: float = 30) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = listening(pid)
        if ports:
            return ports[0]
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never listened")


def job_of(pid: int) -> str:
    """The job id a rank's HELLO carries in clear (what a stranger watching the wire learns)."""
    env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
    return wire.job_id(env[b"RINGDIST_SECRET"])


class Stranger:
    """Holds `HELD` connections to each target: nine in ten silent, the rest part of a HELLO or
    a whole HELLO of the right job and no PROOF. A background thread replaces the connections
    the far side drops (at most `refill` per target per round), so the flood never ends."""

    def __init__(self, job: str, refill: int = 100):
        self.job = job
        self.refill = refill
        self.targets: dict[tuple[str, int], list[socket.socket]] = {}
        self.opened = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def hold(self, address: tuple[str, int]) -> None:
        socks = self._open(address, range(HELD))
        with self._lock:
            self.targets[address] = socks
        if not self._thread.is_alive():
            self._thread.start()

    def _open(self, address: tuple[str, int], slots) -> list[socket.socket]:
        """New connections for `slots` (indexes into the target's list: the index sets the kind)."""
        socks, first_words = [], {}
        for i in slots:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(address)
            socks.append(s)
            if i % 10 == 8:  # a slow HELLO: three bytes of a prefix
                first_words[s.fileno()] = (s, b"RD\x01")
            elif i % 10 == 9:  # a whole HELLO of this job, and then no PROOF
                hello = wire.make_hello(self.job, "world", 0, "ring", 7, os.urandom(wire.NONCE_SIZE))
                first_words[s.fileno()] = (s, wire.encode_map(wire.HELLO, hello))
        self.opened += len(socks)
        poller = select.poll()
        for fd in first_words:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + 3
        while first_words and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                s, data = first_words.pop(fd)
                poller.unregister(fd)
                try:
                    s.send(data)
                except OSError:
                    pass
        return socks

    def _keep(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for address, socks in self.targets.items():
                    dropped = [i for i, s in enumerate(socks) if self._dropped(s)][:self.refill]
                    for i in dropped:
                        socks[i].close()
                    for i, s in zip(dropped, self._open(address, dropped)):
                        socks[i] = s

    @staticmethod
    def _dropped(s: socket.socket) -> bool:
        try:
            data = s.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            for socks in self.targets.values():
                for s in socks:
                    s.close()
            self.targets.clear()


def test_a_job_survives_1000_idle_connections_on_every_port(tmp_path):
    # About 10 s on 2 cores: 4,000 held connections, replaced as the ranks drop them, while
    # three ranks launch, split and run 160 checked collectives.
    n = 3
    raise_fd_limit(HELD * (n + 1) + 1000)
    proc = start_launcher(["-n", str(n), str(SCRIPTS / "besieged.py"), str(tmp_path)], env=FAST)
    stranger = None
    try:
        out, errors = LineReader(proc.stdout), LineReader(proc.stderr)

        def expect(pattern: str, timeout: float = 30) -> list[re.Match[str]]:
            try:
                return out.wait_for(pattern, n, timeout=timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- stderr ---\n{errors.rest(timeout=1)[-4000:]}") from None

        pids = {int(m[1]): int(m[2]) for m in expect(r"^\[(\d)\] pid (\d+)$")}
        stranger = Stranger(job_of(pids[0]))
        stranger.hold(wait_listening(proc.pid))  # the rendezvous, before any rank registers
        (tmp_path / "init").touch()
        for r in range(n - 1):  # ranks waiting for the table: their ports, before the rings connect
            stranger.hold(wait_listening(pids[r]))
        (tmp_path / "last").touch()
        expect(r"^\[\d\] ready$", timeout=60)
        stranger.hold(wait_listening(pids[n - 1]))
        (tmp_path / "go").touch()
        expect(r"^\[\d\] done ", timeout=120)
        assert proc.wait(timeout=30) == 0, out.rest() + errors.rest()
        err = errors.rest()
    finally:
        if stranger is not None:
            stranger.close()
        kill_tree(proc)
    assert len(stranger.targets) == 0 and stranger.opened >= HELD * (n + 1)
    rows = re.findall(r"^\[(\d)\] done fds=(\d+) threads=(\d+) rss_kb=(\d+) refused=(\d+)$", out.rest(), re.M)
    assert sorted(int(r[0]) for r in rows) == list(range(n)), out.rest() + err
    for r, fds, threads, rss_kb, refused in rows:
        # Each rank's listener saw its thousand strangers, yet kept at most 64 of them open, in no thread.
        assert int(refused) >= HELD - 64, (r, refused)
        assert int(fds) < 150, (r, fds)
        assert int(threads) <= 4, (r, threads)
        assert int(rss_kb) < 300_000, (r, rss_kb)
    # Refusals are logged, but not one line each.
    assert len(re.findall(r"refused connection from", err)) <= 10 * (n + 1), err[-3000:]


# ---- the rendezvous alone --------------------------------------------------------------------

SERVER = """
import os, resource, sys
from ringdist.rendezvous import RendezvousServer
server = RendezvousServer(os.environ["SECRET"], 2)
server.start()
if len(sys.argv) > 1:  # leave this many file descriptors free
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + int(sys.argv[1]),
                                                resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.address, flush=True)
sys.stdin.read()
server.close()
"""


class Server:
    """A RendezvousServer for a world of 2 in a process of its own; `stats()` reads its fds, threads and CPU
    time from /proc (it may have no descriptor to spare for that itself). Its output is read as it comes,
    so a server logging without limit cannot block on a full pipe."""

    def __init__(self, secret: str, *args: str):
        self.secret = secret
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "SECRET": secret})
        self.out, self.err = LineReader(self.proc.stdout), LineReader(self.proc.stderr)
        self.address = parse_address(self.out.wait_for(r"^\S+:\d+$")[0][0])

    def stats(self) -> dict[str, float]:
        pid = self.proc.pid
        threads = int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])
        utime, stime = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[11:13]
        return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads,
                "cpu": (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")}

    def finish(self) -> str:
        """Close the server (end of its stdin); its stderr (refusals, then their total as it closes)."""
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        return self.err.rest()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:  # the server has gone
            pass


def register(address: tuple[str, int], secret: bytes, rank: int, timeout: float = 10) -> socket.socket:
    """Register `rank` of 2 as a rank's bootstrap does (dialing again if cut off); its control connection."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.create_connection(address, timeout=timeout)
        hello = wire.make_hello(wire.job_id(secret), RENDEZVOUS_GROUP, rank, "register", 0,
                                os.urandom(wire.NONCE_SIZE))
        try:
            client_handshake(sock, secret, hello, deadline, "the rendezvous")
            break
        except (EOFError, OSError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    send_blocking(sock, encode({"type": "register", "rank": rank, "size": 2,
                                "addresses": [["127.0.0.1", 1]], "host": "h", "pid": 1}), deadline)
    return sock


def table(sock: socket.socket) -> list[int]:
    _, msg, _ = recv_control(sock, time.monotonic() + 10, expect=wire.CONTROL)
    assert msg["type"] == "table", msg
    return [m["rank"] for m in msg["members"]]


def test_rendezvous_holds_no_thread_per_idle_connection_and_registers_through_the_flood():
    secret = "cd" * 32
    raise_fd_limit(HELD + 1200)
    server = Server(secret)
    stranger = Stranger(wire.job_id(secret.encode()))
    socks = []
    try:
        before = server.stats()
        stranger.hold(server.address)
        samples = []
        for _ in range(10):  # while the server works through the arrivals
            samples.append(server.stats())
            time.sleep(0.05)
        during = {k: max(s[k] for s in samples) for k in ("threads", "fds")}
        socks = [register(server.address, secret.encode(), r) for r in (1, 0)]  # both wait for the table
        assert [table(s) for s in socks] == [[0, 1], [0, 1]]
        after = server.stats()
        assert during["threads"] <= before["threads"] and during["fds"] <= before["fds"] + 64 + 2, (before, during)
        # two authenticated control connections: a thread and a descriptor each
        assert after["threads"] <= before["threads"] + 2 and after["fds"] <= before["fds"] + 64 + 2, (before, after)
        err = server.finish()
    finally:
        stranger.close()
        for s in socks:
            s.close()
        server.kill()
    total = re.search(r"\((\d+) in all; ", err)
    assert total and int(total[1]) >= HELD - 64, err[-2000:]  # every stranger but those still in handshake


def test_wrong_job_connections_are_logged_at_a_bounded_rate():
    secret = "ef" * 32
    server = Server(secret)
    count = 3000
    try:
        for i in range(count):  # strangers of another job, each refused with a REJECT
            with socket.create_connection(server.address, timeout=10) as s:
                hello = wire.make_hello(wire.job_id(b"another job"), RENDEZVOUS_GROUP, i, "register", 0,
                                        os.urandom(wire.NONCE_SIZE))
                s.sendall(wire.encode_map(wire.HELLO, hello))
                kind, reply, _ = recv_control(s, time.monotonic() + 10)
                assert kind == wire.REJECT and reply["reason"] == "wrong job"
        err = server.finish()
    finally:
        server.kill()
    lines = err.splitlines()
    assert 10 <= len(lines) <= 20, err[-2000:]  # ten lines, then a summary every 10 s and one at the end
    assert sum("connection for another job" in line for line in lines) >= 10
    assert re.search(rf"refused \d+ more connections \({count} in all; latest from 127\.0\.0\.1:\d+: "
                     r"connection for another job", lines[-1]), lines[-1]


def test_rendezvous_out_of_file_descriptors_neither_spins_nor_keeps_ranks_out():
    secret = "01" * 32
    raise_fd_limit(HELD + 1200)
    server = Server(secret, "24")  # 24 descriptors to spare: fewer than handshakes may be in progress
    stranger = Stranger(wire.job_id(secret.encode()), refill=20)
    socks = []
    try:
        stranger.hold(server.address)
        first = server.stats()
        time.sleep(2)
        second = server.stats()
        # A server spinning on accept() burns its core; this one waits (10x margin on a loaded box).
        assert second["cpu"] - first["cpu"] < 1.0, (first, second)
        socks = [register(server.address, secret.encode(), r, timeout=8) for r in (0, 1)]
        assert [table(s) for s in socks] == [[0, 1], [0, 1]]
    finally:
        stranger.close()
        for s in socks:
            s.close()
        server.kill()


@pytest.mark.parametrize("where", ["abstract", "path"])
def test_a_local_stranger_s_socket_path_is_logged_quoted(where, caplog):
    """A stranger on a rank's local (Unix) socket chooses its own address: a newline or a terminal
    escape in it is shown escaped in the refusal, never as a line or colour of its own (a path
    arrives as a str; an abstract name as bytes)."""
    import tempfile
    from ringdist.endpoint import Endpoint

    forged = "x\n[1] ringdist-launch: FORGED \x1b[31mred\x1b[0m"
    folder = tempfile.mkdtemp(prefix="rdtest-", dir="/tmp")  # short: a Unix path has ~108 bytes
    ep = Endpoint(b"s" * 32, ["127.0.0.1"], connect_timeout=2.0, label="rank 0", local="auto")
    try:
        if ep.local_name is None:
            pytest.skip("no local sockets here")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, caplog.at_level("WARNING", "ringdist"):
            sock.bind("\0" + forged if where == "abstract" else os.path.join(folder, forged))
            sock.connect("\0" + ep.local_name)
            sock.sendall(b"GARBAGE" * 10)
            deadline = time.monotonic() + 10
            while not any("refused connection from" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no refusal logged"
                time.sleep(0.02)
    finally:
        ep.close()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    (line,) = [r.getMessage() for r in caplog.records if "refused connection from" in r.getMessage()]
    assert "\n" not in line and "\x1b" not in line, line
    assert "FORGED \\x1b[31mred" in line and "x\\n[1]" in line, line


def test_a_member_that_gives_up_after_its_hello_is_not_logged_as_refused(caplog):
    """A peer's ask (or dial) that timed out while this rank was stopped closes after its HELLO:
    logged as a refused stranger once the rank went on. A HELLO of another job still is."""
    from ringdist.endpoint import Endpoint

    secret = b"s" * 32
    ep = Endpoint(secret, ["127.0.0.1"], connect_timeout=2.0, label="rank 0")
    try:
        with caplog.at_level("WARNING", "ringdist"):
            for job in (wire.job_id(secret), wire.job_id(b"another job")):
                with socket.create_connection(ep.addresses[0], timeout=5) as sock:
                    hello = wire.make_hello(job, "world", 1, "ask", 0, os.urandom(wire.NONCE_SIZE))
                    sock.sendall(wire.encode_map(wire.HELLO, hello))
                    sock.recv(1024)  # its CHALLENGE, or the REJECT: the HELLO was read
            deadline = time.monotonic() + 10
            while ep._acceptor.refusals.count < 2:
                assert time.monotonic() < deadline, ep._acceptor.refusals.count
                time.sleep(0.02)
    finally:
        ep.close()
    refused = [r.getMessage() for r in caplog.records if "refused connection from" in r.getMessage()]
    assert len(refused) == 1 and "connection for another job" in refused[0], refused
