"""The accepting side of the handshake as a state machine fed bytes, and the dialer's view of refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringdist import wire
from ringdist.errors import AuthError, ProtocolError
from ringdist.handshake import MAX_HANDSHAKE_FRAME, ServerHandshake

SECRET = b"s" * 32
JOB = wire.job_id(SECRET)


def hello_frame(job: str = JOB) -> bytes:
    return wire.encode_map(wire.HELLO, wire.make_hello(job, "world", 2, "ring", 0, os.urandom(wire.NONCE_SIZE)))


def run(hs: ServerHandshake, stream: bytes, step: int = 1 << 20) -> bytes:
    """Feed `stream` as a socket would deliver it (at most `want()` and `step` bytes a time); the rest."""
    while hs.want() and stream:
        n = min(hs.want(), step, len(stream))
        hs.feed(stream[:n])
        stream = stream[n:]
    return stream


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_a_real_peer_is_welcomed_and_nothing_after_its_proof_is_read(step):
    hs = ServerHandshake(SECRET, JOB)
    hello = hello_frame()
    assert run(hs, hello, step) == b""
    kind, length = wire.decode_prefix(bytes(hs.outgoing[:8]))
    assert kind == wire.CHALLENGE and not hs.done
    nonce = wire.decode_map(bytes(hs.outgoing[8:8 + length]))["nonce"]
    hs.outgoing.clear()
    proof = wire.encode_map(wire.PROOF, {"mac": wire.proof_mac(SECRET, b"client", hello[8:], nonce)})
    after = wire.encode_map(wire.HEADER, wire.make_header("all_gather", 0, "<f4", (4,)))
    assert run(hs, proof + after, step) == after  # the next frame stays in the socket for its reader
    assert hs.done and hs.want() == 0 and hs.hello["rank"] == 2
    kind, length = wire.decode_prefix(bytes(hs.outgoing[:8]))
    mac = wire.decode_map(bytes(hs.outgoing[8:8 + length]))["mac"]
    assert kind == wire.WELCOME and mac == wire.proof_mac(SECRET, b"server", hello[8:], nonce)


def test_another_job_and_a_wrong_proof_are_refused_with_a_reject():
    hs = ServerHandshake(SECRET, JOB)
    with pytest.raises(AuthError, match="another job"):
        run(hs, hello_frame(wire.job_id(b"other")))
    assert wire.decode_prefix(bytes(hs.outgoing[:8]))[0] == wire.REJECT
    hs = ServerHandshake(SECRET, JOB)
    hello = hello_frame()
    run(hs, hello)
    hs.outgoing.clear()
    stale = wire.proof_mac(SECRET, b"client", hello[8:], os.urandom(wire.NONCE_SIZE))  # a replayed proof
    with pytest.raises(AuthError, match="rank 2 of group 'world' failed authentication"):
        run(hs, wire.encode_map(wire.PROOF, {"mac": stale}))
    assert wire.decode_prefix(bytes(hs.outgoing[:8]))[0] == wire.REJECT


def test_a_handshake_frame_is_bounded_before_its_body_is_read():
    hs = ServerHandshake(SECRET, JOB)
    with pytest.raises(ProtocolError, match=f"limit {MAX_HANDSHAKE_FRAME}"):
        run(hs, wire.encode_prefix(wire.HELLO, MAX_HANDSHAKE_FRAME + 1))
    assert hs.received == wire.PREFIX_SIZE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(1, 64))
def test_arbitrary_bytes_cost_at_most_a_protocol_error(data, step):
    hs = ServerHandshake(SECRET, JOB)
    try:
        run(hs, hello_frame()[:8] + data if data[:1] == b"\x00" else data, step)
    except ProtocolError:
        pass
    assert not hs.done
    assert hs.received <= 2 * (wire.PREFIX_SIZE + MAX_HANDSHAKE_FRAME)


def test_a_rank_with_another_secret_fails_at_once_naming_the_refusal():
    """The dialer tries again when a handshake is cut off, but never when the peer refused it."""
    from test_strangers import Server

    server = Server("ab" * 32)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGDIST_")}
        env.update(RINGDIST_RANK="0", RINGDIST_WORLD_SIZE="2", RINGDIST_SECRET="not the job's secret",
                   RINGDIST_RENDEZVOUS=f"{server.address[0]}:{server.address[1]}", RINGDIST_CONNECT_TIMEOUT="60")
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-c", "import ringdist as rd\ntry:\n    rd.init()\n"
                              "except rd.AuthError as e:\n    print('AuthError:', e)\n"],
                             capture_output=True, text=True, timeout=60, env=env)
        elapsed = time.monotonic() - t0
    finally:
        server.kill()
    assert res.stdout.startswith("AuthError: rank 0: handshake with the rendezvous at 127.0.0.1:"), \
        res.stdout + res.stderr
    assert "refused by peer: wrong job" in res.stdout
    assert "ringdist-launch sets RINGDIST_SECRET itself; under a scheduler, set RINGDIST_SECRET" in res.stdout
    assert elapsed < 30  # not RINGDIST_CONNECT_TIMEOUT's 60 s of trying again


def test_a_peer_that_keeps_cutting_handshakes_off_is_reported_with_the_likely_reasons():
    """A listener that accepts and closes every connection before WELCOME (an acceptor out of file
    descriptors, or evicting under a flood): the dialer tries until its deadline, then its error
    says what cuts handshakes off and where to look."""
    import socket
    import threading

    from ringdist.endpoint import Endpoint, InboxKey
    from ringdist.errors import ConnectError

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    stop = threading.Event()

    def cut_off() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=cut_off, daemon=True)
    thread.start()
    ep = Endpoint(b"s" * 32, ["127.0.0.1"], connect_timeout=2.0, label="rank 0", local=None)
    try:
        with pytest.raises(ConnectError) as info:
            ep.connect([lsock.getsockname()], InboxKey("world", 0, "ring", 0), time.monotonic() + 0.5, "rank 1")
    finally:
        stop.set()
        thread.join(5)
        ep.close()
        lsock.close()
    text = str(info.value)
    assert "handshake cut off (connection closed before WELCOME)" in text, text
    assert text.endswith("its acceptor drops handshakes it cannot serve: it is out of file descriptors "
                         "(raise ulimit -n) or flooded by strangers, and its log says which"), text
