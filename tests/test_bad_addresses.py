"""A member that registers addresses no rank can dial: the rendezvous refuses it, every rank's
init() fails at once naming that rank, and a rank checks the table it is given all the same.

The rendezvous is a real `RendezvousServer` (or, for a table it would never send, a stand-in
that passes the job's handshake); the member at fault dials with the real handshake; the
ranks that wait are real processes calling `rd.init()`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import JOINING_RANK, serve_handshake
from ringdist import rendezvous, wire
from ringdist.channel import recv_control, send_blocking
from ringdist.endpoint import Endpoint, InboxKey
from ringdist.rendezvous import RendezvousServer

SECRET = b"bad addresses test secret"


BAD = {  # what a member registers -> what the refusal says of it
    "a string": (["x"], "addresses[0] is 'x', not a [host, port] pair"),
    "three fields": ([[1, 2, 3]], "addresses[0] is [1, 2, 3], not a [host, port] pair"),
    "a port in words": ([["127.0.0.1", "abc"]], "addresses[0] port is 'abc', not an integer from 1 to 65535"),
    "a port too large": ([["127.0.0.1", 99999]], "addresses[0] port is 99999, not an integer from 1 to 65535"),
    "port 0": ([["127.0.0.1", 0]], "addresses[0] port is 0, not an integer from 1 to 65535"),
    "a port that is a bool": ([["127.0.0.1", True]], "addresses[0] port is True, not an integer"),
    "a host that is a number": ([[5, 1]], "addresses[0] host is 5, not an IP address or host name"),
    "a host with spaces": ([["evil host", 1]], "addresses[0] host is 'evil host', not an IP address"),
    "a host too long": ([["a" * 300, 1]], "addresses[0] host is 'aaaa"),
    "the second entry": ([["127.0.0.1", 1], ["::1"]], "addresses[1] is ['::1'], not a [host, port] pair"),
    "none": ([], "addresses must be a non-empty list of [host, port] pairs, got []"),
    "not a list": ("127.0.0.1:1", "addresses must be a non-empty list of [host, port] pairs, got '127.0.0.1:1'"),
    "too many": ([["127.0.0.1", 1]] * 65, "addresses has 65 entries, more than the 64 a rank may register"),
}


def _env(address: str, rank: int = 0, size: int = 2) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGDIST_")}
    env.update(RINGDIST_RANK=str(rank), RINGDIST_WORLD_SIZE=str(size), RINGDIST_RENDEZVOUS=address,
               RINGDIST_SECRET=SECRET.decode(), RINGDIST_CONNECT_TIMEOUT="10", RINGDIST_INIT_TIMEOUT="60")
    return env


def _dial(server: RendezvousServer, dialer: Endpoint, rank: int) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    return dialer.connect([(host, int(port))], InboxKey(rendezvous.RENDEZVOUS_GROUP, rank, "register", 0),
                          time.monotonic() + 5, "the rendezvous")


def _register(sock: socket.socket, rank: int, addresses: object, size: int = 4) -> None:
    send_blocking(sock, rendezvous.encode({"type": "register", "rank": rank, "size": size, "addresses": addresses,
                                           "host": "h", "pid": 1, "agree": {}}), time.monotonic() + 5)


def test_good_addresses_pass_the_check():
    assert rendezvous.address_problem([["127.0.0.1", 1], ["::1", 65535], ["fe80::1%eth0", 80],
                                       ["node-7.cluster.example", 4000]]) is None


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_rendezvous_refuses_bad_addresses_and_tells_every_rank_waiting(case):
    addresses, words = BAD[case]
    server = RendezvousServer(SECRET.decode(), 4)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    try:
        waiting = _dial(server, dialer, 0)
        _register(waiting, 0, [["127.0.0.1", 1000]])
        deadline = time.monotonic() + 10
        while server.missing() != [1, 2, 3] and time.monotonic() < deadline:
            time.sleep(0.001)
        bad = _dial(server, dialer, 1)
        _register(bad, 1, addresses)
        _, msg, _ = recv_control(bad, time.monotonic() + 5)
        assert msg["type"] == "error", msg
        assert msg["message"].startswith("rank 1 registered addresses no rank can dial: "), msg
        assert words in msg["message"], msg
        _, told, _ = recv_control(waiting, time.monotonic() + 5)  # at once, not at its init timeout
        assert told == {"type": "error", "message": f"the job cannot start: {msg['message']}"}, told
        assert server.missing() == [1, 2, 3]  # nothing of it went into the table
        for sock in (waiting, bad):
            sock.close()
    finally:
        dialer.close()
        server.close()


def test_a_rank_waiting_in_init_fails_at_once_naming_the_member_with_bad_addresses():
    # Rank 1 registers ["x"]: rank 0, a real process in init(), raised ValueError from the table.
    server = RendezvousServer(SECRET.decode(), 2)
    server.start()
    dialer = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="test")
    proc = subprocess.Popen([sys.executable, "-c", JOINING_RANK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(server.address))
    try:
        deadline = time.monotonic() + 30
        while server.missing() != [1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.missing() == [1]
        bad = _dial(server, dialer, 1)
        _register(bad, 1, ["x"], size=2)
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
        bad.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dialer.close()
        server.close()
    assert proc.returncode == 3 and "Traceback" not in err, out + err
    assert out.startswith(f"ConfigError: rank 0: the rendezvous at {server.address} refused: the job cannot start: "
                          f"rank 1 registered addresses no rank can dial: addresses[0] is 'x', not a [host, port] "
                          f"pair"), out + err
    assert elapsed < 10, elapsed  # its init timeout is 60 s


class TableRendezvous:
    """A stand-in rendezvous that passes the handshake, reads a registration and answers with
    a table whose entry for rank 1 is `entry` (rank 0's is the registration's own)."""

    def __init__(self, entry: object):
        self.entry = entry
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.address = "%s:%d" % self.listener.getsockname()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            deadline = time.monotonic() + 10
            serve_handshake(conn, SECRET, wire.job_id(SECRET), deadline)
            _, msg, _ = recv_control(conn, deadline, expect=wire.CONTROL)
            mine = {k: msg.get(k) for k in ("rank", "addresses", "host", "pid", "agree", "object_cap")}
            send_blocking(conn, rendezvous.encode({"type": "table", "members": [mine, self.entry]}), deadline)
            try:
                conn.recv(1)  # until the rank closes it
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self._thread.join(20)


@pytest.mark.parametrize("entry, words", [
    ({"rank": 1, "addresses": ["x"]}, "addresses[0] is 'x', not a [host, port] pair"),
    ({"rank": 1, "addresses": [[1, 2, 3]]}, "addresses[0] is [1, 2, 3], not a [host, port] pair"),
    ({"rank": 1, "addresses": [["127.0.0.1", "abc"]]}, "addresses[0] port is 'abc', not an integer"),
    ({"rank": 1, "addresses": [[5, 1]]}, "addresses[0] host is 5, not an IP address or host name"),
    ({"rank": 1, "addresses": [["127.0.0.1", 99999]]}, "addresses[0] port is 99999, not an integer"),
    ({"rank": 1}, "addresses must be a non-empty list of [host, port] pairs, got None"),
    ("rank 1", "the entry is str, not a map"),
])
def test_a_rank_checks_the_table_it_is_given_and_names_the_rank_at_fault(entry, words):
    server = TableRendezvous(entry)
    try:
        res = subprocess.run([sys.executable, "-c", JOINING_RANK], capture_output=True, text=True, timeout=60,
                             env=_env(server.address))
    finally:
        server.close()
    out = res.stdout + res.stderr
    assert res.returncode == 3 and "Traceback" not in res.stderr, out
    assert res.stdout.startswith("ProtocolError: rank 0: the rendezvous's table gives world rank 1 addresses no "
                                 "rank can dial: "), out
    assert words in res.stdout, out


def test_a_rendezvous_that_never_answers_the_handshake_names_the_connect_timeout():
    # A listener that takes connections (the kernel's backlog) but never sends WELCOME: the
    # rank's ConnectError says which limit ran out, not only "timed out" (a network fault).
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        host, port = silent.getsockname()[:2]
        env = dict(_env(f"{host}:{port}"), RINGDIST_CONNECT_TIMEOUT="0.5")
        proc = subprocess.run([sys.executable, "-c", JOINING_RANK], capture_output=True, text=True, env=env,
                              timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ConnectError: rank 0: cannot reach the rendezvous"), proc.stdout
    assert "timed out" in proc.stdout and "(RINGDIST_CONNECT_TIMEOUT=0.5 s sets the limit; a process stopped, or " \
        "out of file descriptors, takes no connection: its log says the latter)" in proc.stdout, proc.stdout
