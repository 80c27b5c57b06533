"""A rank whose rendezvous connection breaks while it registers: a RingError naming the rendezvous.

The rendezvous here is a stand-in that passes the job's handshake and then breaks the
connection in one of three ways; the rank is a real process calling `rd.init()`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from ringdist import wire
from ringdist.channel import recv_control
from ringdist.rendezvous import RendezvousServer
from helpers import JOINING_RANK, serve_handshake

SECRET = b"registration test secret"



class BreakingRendezvous:
    """Accepts ranks, passes the handshake, then breaks the connection as `how` says:
    'reset' (RST) at once, 'reset-after-register' (RST once the registration arrived) or
    'close-after-register' (FIN once it arrived)."""

    def __init__(self, how: str):
        self.how = how
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = self.listener.getsockname()
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                serve_handshake(conn, SECRET, wire.job_id(SECRET), time.monotonic() + 5)
                self.handshakes += 1
                if self.how != "reset":  # read the whole registration: a close is then a FIN, not a reset
                    recv_control(conn, time.monotonic() + 5, expect=wire.CONTROL)
                if self.how.startswith("reset"):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()


@pytest.mark.parametrize("how", ["reset", "reset-after-register", "close-after-register"])
def test_a_rendezvous_connection_broken_during_registration_is_a_ring_error_naming_it(how):
    server = BreakingRendezvous(how)
    host, port = server.address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGDIST_")}
    env.update(RINGDIST_RANK="0", RINGDIST_WORLD_SIZE="2", RINGDIST_RENDEZVOUS=f"{host}:{port}",
               RINGDIST_SECRET=SECRET.decode(), RINGDIST_CONNECT_TIMEOUT="3", RINGDIST_INIT_TIMEOUT="20")
    try:
        res = subprocess.run([sys.executable, "-c", JOINING_RANK], capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.close()
    out = res.stdout + res.stderr
    assert server.handshakes >= 1, out
    assert res.returncode == 3, out  # a RingError, not a traceback of a raw OSError
    assert "Traceback" not in res.stderr, out
    kind, _, message = res.stdout.strip().partition(": ")
    assert kind in ("ConnectError", "PeerLostError"), out
    assert f"{host}:{port}" in message and "rank 0" in message, out


def test_an_init_timeout_that_passes_before_the_registration_is_sent_is_a_ring_timeout_error():
    """RINGDIST_INIT_TIMEOUT so short that it has passed when the rank sends its registration."""
    server = RendezvousServer(SECRET.decode(), 2)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGDIST_")}
    env.update(RINGDIST_RANK="0", RINGDIST_WORLD_SIZE="2", RINGDIST_RENDEZVOUS=server.address,
               RINGDIST_SECRET=SECRET.decode(), RINGDIST_CONNECT_TIMEOUT="10", RINGDIST_INIT_TIMEOUT="1e-9")
    try:
        res = subprocess.run([sys.executable, "-c", JOINING_RANK], capture_output=True, text=True, timeout=60, env=env)
        refused = server.refused
    finally:
        server.close()
    out = res.stdout + res.stderr
    assert res.returncode == 3 and "Traceback" not in res.stderr, out
    assert res.stdout.startswith(f"RingTimeoutError: rank 0: init() timed out after 1e-09 s before its registration "
                                 f"reached the rendezvous {server.address} (RINGDIST_INIT_TIMEOUT sets the limit)"), out
    # It asked nothing after a registration it never sent: a query first was refused (and logged)
    # by the launcher's rendezvous as a stranger's.
    assert refused == 0, refused


def _register(server: RendezvousServer, dialer, rank: int) -> socket.socket:
    """A rank's control connection to `server`, its registration sent."""
    from ringdist import rendezvous
    from ringdist.channel import send_blocking
    from ringdist.endpoint import InboxKey

    host, port = server.address.rsplit(":", 1)
    sock = dialer.connect([(host, int(port))], InboxKey(rendezvous.RENDEZVOUS_GROUP, rank, "register", 0),
                          time.monotonic() + 5, "the rendezvous")
    send_blocking(sock, rendezvous.encode({"type": "register", "rank": rank, "size": 4,
                                           "addresses": [["127.0.0.1", 1000 + rank]], "host": "h", "pid": 1,
                                           "agree": {}}), time.monotonic() + 5)
    return sock


@contextlib.contextmanager
def _announcing():
    """A rendezvous of 4 ranks that announces departures, and a dialer to register at it."""
    from ringdist.endpoint import Endpoint

    server = RendezvousServer(SECRET.decode(), 4, announce_departures=True)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    try:
        yield server, dialer
    finally:
        dialer.close()
        server.close()


@pytest.mark.parametrize("announce", [True, False])
def test_departures_reach_ranks_registered_before_and_after_and_follow_the_table(announce):
    # Under the launcher (announce) a rank that leaves is told to every rank, those that register
    # later included; a rank owed the table gets the table first. Under a scheduler nothing is.
    from ringdist.endpoint import Endpoint

    server = RendezvousServer(SECRET.decode(), 4, announce_departures=announce)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    try:
        a = _register(server, dialer, 0)
        b = _register(server, dialer, 1)
        b.close()  # rank 1 leaves before the job starts
        c = _register(server, dialer, 2)  # rank 2 registers after it left
        expected = [{"type": "left", "rank": 1, "why": "its connection to the launcher closed (its process ended)"}]
        for sock in (a, c):
            if announce:
                _, msg, _ = recv_control(sock, time.monotonic() + 5)
                assert [msg] == expected, msg
            else:
                sock.settimeout(0.3)
                with pytest.raises(socket.timeout):
                    sock.recv(1)
        d = _register(server, dialer, 3)  # the table is complete: ranks 0, 2 and 3 get it
        for sock in (a, c, d):
            _, msg, _ = recv_control(sock, time.monotonic() + 5)
            assert msg["type"] == "table" and [m["rank"] for m in msg["members"]] == [0, 1, 2, 3], msg
        server.rank_left(3, "exited with code 1")  # after the table: told to the others
        for sock in (a, c):
            if announce:
                _, msg, _ = recv_control(sock, time.monotonic() + 5)
                # With the first departure, often the cause of the later ones.
                assert msg == {"type": "left", "rank": 3, "why": "exited with code 1, after world rank 1 left "
                               "first (its connection to the launcher closed (its process ended))"}, msg
        for sock in (a, c, d):
            sock.close()
    finally:
        dialer.close()
        server.close()


def test_a_departure_while_the_table_goes_out_reaches_a_rank_after_its_table(monkeypatch):
    # The last registration makes the table; a rank that leaves while it is being sent out is
    # told to each rank only once that rank has its table, so every rank checks the same table.
    from ringdist.endpoint import Endpoint

    server = RendezvousServer(SECRET.decode(), 4, announce_departures=True)
    send_table = server._send_table

    def departure_first(rank: int) -> None:
        if rank == 2:  # the table is made, ranks 0 and 1 have it, rank 2's is still due
            server.rank_left(1, "exited with code 1")
        send_table(rank)

    monkeypatch.setattr(server, "_send_table", departure_first)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    try:
        socks = [_register(server, dialer, r) for r in range(4)]
        got = {}
        for r in (0, 2, 3):
            kinds = []
            for _ in range(2):
                _, msg, _ = recv_control(socks[r], time.monotonic() + 5)
                kinds.append(msg["type"])
                if msg["type"] == "left":
                    assert msg == {"type": "left", "rank": 1, "why": "exited with code 1"}, msg
            got[r] = kinds
        assert got == {0: ["table", "left"], 2: ["table", "left"], 3: ["table", "left"]}, got
        for sock in socks:
            sock.close()
    finally:
        dialer.close()
        server.close()


def test_a_departure_after_one_before_registering_names_that_one():
    # Rank 3 never registered (killed before init): the later departure of rank 1 names it first.
    with _announcing() as (server, dialer):
        server.rank_left(3, "was killed by signal 9 (SIGKILL)")
        a = _register(server, dialer, 0)
        _, msg, _ = recv_control(a, time.monotonic() + 5)
        assert msg == {"type": "left", "rank": 3, "why": "was killed by signal 9 (SIGKILL)"}, msg
        b, c = _register(server, dialer, 1), _register(server, dialer, 2)
        for sock, rank in ((b, 1), (c, 2)):  # each names rank 3, the first to leave
            sock.close()
            _, msg, _ = recv_control(a, time.monotonic() + 5)
            assert msg == {"type": "left", "rank": rank, "why": "its connection to the launcher closed (its "
                           "process ended), after world rank 3 left first (was killed by signal 9 (SIGKILL))"}, msg
        a.close()


def test_a_departure_gives_the_failure_the_rank_told():
    from ringdist import rendezvous
    from ringdist.channel import send_blocking

    with _announcing() as (server, dialer):
        a, b, c, d = (_register(server, dialer, r) for r in range(4))
        for sock in (a, c):  # (read before d leaves: its departure, seen first, was told first)
            _, msg, _ = recv_control(sock, time.monotonic() + 5)
            assert msg["type"] == "table", msg
        d.close()
        for sock in (a, c):
            _, msg, _ = recv_control(sock, time.monotonic() + 5)
            assert msg["type"] == "left" and msg["rank"] == 3, msg
        server.rank_exited(3, "exited with code 0", clean=True)  # not the first to leave, then
        send_blocking(b, rendezvous.encode({"type": "failed", "why": "MismatchError: rank 1: " + "x" * 900}),
                      time.monotonic() + 5)
        b.close()  # after its failure, on the same connection: read first
        raised = "; it had raised MismatchError: rank 1: " + "x" * (rendezvous.FAILURE_CHARS - 23)
        assert server.waited() == {}  # (it told no ranks it waited for)
        for sock in (a, c):
            _, msg, _ = recv_control(sock, time.monotonic() + 5)
            assert msg == {"type": "left", "rank": 1,
                           "why": "its connection to the launcher closed (its process ended)" + raised}, msg
        # A timeout's ranks waited for are kept for the launcher's summary: world ranks alone,
        # the first told (a second failure told changes nothing).
        for waited in ([3, 0, -1, 4, 2 ** 40], [0]):
            send_blocking(c, rendezvous.encode({"type": "failed", "why": "RingTimeoutError: rank 2", "waited": waited}),
                          time.monotonic() + 5)
        send_blocking(a, rendezvous.encode({"type": "failed", "why": "RingTimeoutError: rank 0", "waited": [1, True]}),
                      time.monotonic() + 5)
        deadline = time.monotonic() + 5
        while not {0, 2} <= server.told().keys() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.waited() == {2: (3, 0)}, server.waited()
        c.close()  # the first to leave, and what it raised, with the next departure
        _, msg, _ = recv_control(a, time.monotonic() + 5)
        assert msg == {"type": "left", "rank": 2, "why": "its connection to the launcher closed (its process "
                       "ended); it had raised RingTimeoutError: rank 2, after world rank 1 left first (its connection to the launcher closed (its process ended)"
                       + raised + ")"}, msg
        a.close()


def test_a_failure_is_told_in_one_line_without_touching_the_readers_timeout():
    import socket
    import threading

    from ringdist import aborts, channel
    from ringdist.errors import MismatchError

    assert aborts.summary(TypeError("all_sum: dtype <U1 is not numeric"), 0) == \
        "TypeError: all_sum: dtype <U1 is not numeric"  # the class named once
    assert aborts.summary(MismatchError("rank 0 called x but rank 1 called y"), 0) == \
        "MismatchError: rank 0 called x but rank 1 called y"
    # The control connection's watch thread blocks in a recv: a failure sent beside it leaves
    # the socket blocking (a timeout set meanwhile would make that recv spin on EAGAIN).
    a, b = socket.socketpair()
    got = []
    reader = threading.Thread(target=lambda: got.append(a.recv(100)))
    reader.start()
    time.sleep(0.05)
    channel.send_beside_reader(b, b"x" * 10, time.monotonic() + 5)
    channel.send_beside_reader(a, b"y" * 3, time.monotonic() + 5)
    reader.join(5)
    assert got == [b"x" * 10] and a.gettimeout() is None and b.gettimeout() is None
    assert b.recv(10) == b"yyy"
    a.close()
    b.close()


def test_a_rank_that_exited_cleanly_is_not_named_as_the_first_to_leave():
    # Rank 2 finished and exited with code 0; rank 1 fails later: its notice names no one before it.

    with _announcing() as (server, dialer):
        a, b, c = (_register(server, dialer, r) for r in range(3))
        c.close()
        _, msg, _ = recv_control(a, time.monotonic() + 5)
        assert msg == {"type": "left", "rank": 2, "why": "its connection to the launcher closed (its process ended)"}
        server.rank_exited(2, "exited with code 0", clean=True)
        server.rank_exited(1, "exited with code 1", clean=False)
        _, msg, _ = recv_control(a, time.monotonic() + 5)
        assert msg == {"type": "left", "rank": 1, "why": "exited with code 1"}, msg
        server.rank_exited(3, "was killed by signal 9 (SIGKILL)", clean=False)  # named with rank 1's exit
        _, msg, _ = recv_control(a, time.monotonic() + 5)
        assert msg == {"type": "left", "rank": 3, "why": "was killed by signal 9 (SIGKILL), after world rank 1 "
                       "left first (exited with code 1)"}, msg
        for sock in (a, b):
            sock.close()


@pytest.mark.parametrize("mistake", ["twice", "size", "range"])
def test_a_registration_no_world_can_take_ends_the_wait_of_every_rank(mistake):
    # Two processes with one rank, or ranks counting different worlds (a scheduler's variables
    # set wrong): the ranks waiting for the table hear at once, not after RINGDIST_INIT_TIMEOUT.
    from ringdist import rendezvous
    from ringdist.channel import send_blocking
    from ringdist.endpoint import Endpoint, InboxKey

    server = RendezvousServer(SECRET.decode(), 4)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    try:
        waiting = [_register(server, dialer, 0), _register(server, dialer, 1)]
        deadline = time.monotonic() + 10
        while server.missing() != [2, 3] and time.monotonic() < deadline:  # both filed before the mistake comes
            time.sleep(0.001)
        assert server.missing() == [2, 3]
        host, port = server.address.rsplit(":", 1)
        bad = dialer.connect([(host, int(port))], InboxKey(rendezvous.RENDEZVOUS_GROUP, 1, "register", 0),
                             time.monotonic() + 5, "the rendezvous")
        rank, size = {"twice": (1, 4), "size": (2, 3), "range": (7, 4)}[mistake]
        send_blocking(bad, rendezvous.encode({"type": "register", "rank": rank, "size": size,
                                              "addresses": [["127.0.0.1", 999]], "host": "h", "pid": 77,
                                              "agree": {}}), time.monotonic() + 5)
        words = {"twice": "rank 1 registered twice (first from pid 1, then from pid 77): each process needs its "
                          "own rank",
                 "size": "rank 2 says the world has 3 ranks; this rendezvous serves a world of 4",
                 "range": "rank 7 is out of range for a world of 4"}[mistake]
        _, msg, _ = recv_control(bad, time.monotonic() + 5)
        assert msg == {"type": "error", "message": words}, msg
        for sock in waiting:
            _, msg, _ = recv_control(sock, time.monotonic() + 5)
            assert msg == {"type": "error", "message": f"the job cannot start: {words}"}, msg
        late = _register(server, dialer, 3)  # a rank that registers afterwards hears it too
        _, msg, _ = recv_control(late, time.monotonic() + 5)
        assert msg == {"type": "error", "message": f"the job cannot start: {words}"}, msg
        for sock in (*waiting, bad, late):
            sock.close()
    finally:
        dialer.close()
        server.close()


def test_a_control_frame_begun_before_a_deadline_is_read_whole():
    # A rank's init() deadline passed while a rendezvous notice was coming: its prefix was read,
    # its body not, and the query for the missing ranks then read the body as a prefix ("bad frame
    # magic", under load; the timeout lost its list of ranks that never registered).
    import socket
    import threading

    from ringdist import channel, rendezvous, wire
    from ringdist import errors as rd_errors

    a, b = socket.socketpair()
    frame = rendezvous.encode({"type": "left", "rank": 5, "why": "x"})
    second = rendezvous.encode({"type": "missing", "ranks": [5]})
    try:
        a.sendall(frame[:wire.PREFIX_SIZE + 3])
        later = threading.Timer(0.3, lambda: a.sendall(frame[wire.PREFIX_SIZE + 3:] + second))
        later.start()
        _, msg, _ = channel.recv_control(b, time.monotonic() + 0.1)
        assert msg == {"type": "left", "rank": 5, "why": "x"}
        _, msg, _ = channel.recv_control(b, time.monotonic() + 5)
        assert msg == {"type": "missing", "ranks": [5]}
        later.join()
        a.sendall(frame[:3])  # a prefix begun and never ended: a timeout, REST_WAIT past the deadline
        started = time.monotonic()
        with pytest.raises(rd_errors.RingTimeoutError, match="3 of 8 bytes received"):
            channel.recv_control(b, time.monotonic() + 0.1)
        assert 0.9 < time.monotonic() - started < 3
    finally:
        a.close()
        b.close()
