"""HMAC-SHA256 challenge-response on a fresh connection (both sides prove the job secret).

Connecting side                        accepting side
  HELLO {job, group, rank, kind, lane, nonce}  ->
                                       <-  CHALLENGE {nonce: fresh server nonce}
  PROOF {mac: HMAC(secret, "client" | hello | server nonce)}  ->
                                       <-  WELCOME {mac: HMAC(secret, "server" | hello | server nonce)}

The server nonce is fresh per connection, so a recorded handshake cannot be replayed;
the role tag keeps one side's proof from serving as the other's.

The accepting side is `ServerHandshake`, a state machine fed bytes (no socket, no
thread), so one selector can run many handshakes at once (`acceptor`). Its WELCOME may say
`ended`: the group the connection is for has ended there (closed), which the connecting side
raises as `GroupEnded` (a PeerLostError), before anything is sent on it. A refusal
(wrong job, wrong secret) queues a REJECT for the peer before raising AuthError.
The connecting side treats a REJECT or a failed server proof as final (AuthError),
and a connection closed or reset before WELCOME as cut off (`HandshakeCutOff`, a
PeerLostError): an acceptor at its limit drops connections, and the dialer tries again.
A deadline that passes is a RingTimeoutError.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from . import wire
from .channel import recv_control, send_blocking
from .errors import AuthError, PeerLostError, ProtocolError, RingTimeoutError

# Largest handshake frame body: a HELLO is a few hundred bytes (names are capped at 256).
MAX_HANDSHAKE_FRAME = 2048


class HandshakeCutOff(PeerLostError, EOFError):
    """The peer closed or reset the connection before the handshake finished (no REJECT: not a
    refusal). Also an EOFError, for callers that treat it as the end of the stream."""


class GroupEnded(PeerLostError):
    """The peer authenticated, and said the group the connection is for has ended there (its
    WELCOME's `ended`: why). Nothing sent on the connection would be read."""


# Ranks of one job that know different secrets meet as strangers: say where the secret comes from.
SECRET_HINT = (" (every rank of a job needs the same secret: ringdist-launch sets RINGDIST_SECRET itself; under "
               "a scheduler, set RINGDIST_SECRET or RINGDIST_SECRET_FILE alike for every rank)")


def client_handshake(sock: socket.socket, secret: bytes, hello: dict[str, Any], deadline: float,
                     peer: str) -> None:
    """Run the connecting side; AuthError if the peer is not part of this job.

    HandshakeCutOff when the peer closes or resets the connection before WELCOME without
    saying why; RingTimeoutError when `deadline` passes first.
    """
    frame = wire.encode_map(wire.HELLO, hello)
    hello_body = frame[wire.PREFIX_SIZE:]
    try:
        send_blocking(sock, frame, deadline, peer=peer)
        _, challenge, _ = recv_control(sock, deadline, expect=wire.CHALLENGE, peer=peer)
        server_nonce = wire.require(challenge, "nonce", bytes)
        mac = wire.proof_mac(secret, b"client", hello_body, server_nonce)
        send_blocking(sock, wire.encode_map(wire.PROOF, {"mac": mac}), deadline, peer=peer)
        _, welcome, _ = recv_control(sock, deadline, expect=wire.WELCOME, peer=peer)
    except ProtocolError as exc:
        hint = SECRET_HINT if str(exc).startswith("refused by peer") else ""
        raise AuthError(f"handshake with {peer} failed: {exc}{hint}") from None
    except RingTimeoutError as exc:
        raise RingTimeoutError(f"handshake: {exc}") from None
    except PeerLostError as exc:
        raise HandshakeCutOff(f"handshake cut off before WELCOME: {exc}") from None
    expected = wire.proof_mac(secret, b"server", hello_body, server_nonce)
    if not wire.macs_equal(wire.require(welcome, "mac", bytes), expected):
        raise AuthError(f"{peer} does not know this job's secret (server proof failed){SECRET_HINT}")
    ended = welcome.get("ended")
    if ended is not None:
        raise GroupEnded(ended if isinstance(ended, str) else f"{peer} says the group has ended there")


class ServerHandshake:
    """The accepting side, sans I/O: `feed` it exactly `want()` bytes at a time, send `outgoing`.

    It never asks for a byte past the PROOF, so whatever the peer sends after the
    handshake stays in the socket for the connection's next reader. `received` counts
    the bytes fed so far; `done` is set once WELCOME is queued, `hello` then holds the
    verified HELLO fields. `verdict(hello)`, if given, says why the group of a verified HELLO has
    ended here (its WELCOME says so), or None. `feed` raises ProtocolError on garbage and AuthError on a
    wrong job or secret (with a REJECT queued in `outgoing`).
    """

    def __init__(self, secret: bytes, job: str, verdict: Callable[[dict[str, Any]], str | None] | None = None):
        self._secret = secret
        self._job = job
        self._verdict = verdict  # (the verified HELLO) -> why its group has ended here, or None
        self._expect = wire.HELLO
        self._kind = 0
        self._length = -1  # body length of the frame being read; -1 while reading its prefix
        self._buf = bytearray()
        self._hello_body = b""
        self._nonce = b""
        self.outgoing = bytearray()
        self.received = 0
        self.hello: dict[str, Any] | None = None
        self.done = False

    @property
    def introduced(self) -> bool:
        """Whether a HELLO of this job came and its proof is awaited: a member that gives up on the
        handshake (an ask while this rank was stopped, a dial that timed out) closes here."""
        return self._expect == wire.PROOF and not self.done

    def want(self) -> int:
        """Bytes to read next (0 once done)."""
        if self.done:
            return 0
        need = wire.PREFIX_SIZE if self._length < 0 else self._length
        return need - len(self._buf)

    def feed(self, data: bytes) -> None:
        if len(data) > self.want():
            raise ValueError(f"fed {len(data)} bytes, wanted at most {self.want()}")
        self.received += len(data)
        self._buf += data
        if self._length < 0:
            if len(self._buf) < wire.PREFIX_SIZE:
                return
            kind, length = wire.decode_prefix(self._buf)
            if kind == wire.DATA:
                raise ProtocolError("DATA frame during the handshake")
            if length > MAX_HANDSHAKE_FRAME:
                raise ProtocolError(f"{wire.KIND_NAMES[kind]} frame of {length} bytes during the handshake "
                                    f"(limit {MAX_HANDSHAKE_FRAME})")
            if kind != self._expect:
                raise ProtocolError(f"expected a {wire.KIND_NAMES[self._expect]} frame, got {wire.KIND_NAMES[kind]}")
            self._kind, self._length = kind, length
            self._buf.clear()
        if len(self._buf) < self._length:
            return
        body = bytes(self._buf)
        self._buf.clear()
        self._length = -1
        fields = wire.decode_map(body)
        if self._kind == wire.HELLO:
            self._on_hello(fields, body)
        else:
            self._on_proof(fields)

    def _on_hello(self, hello: dict[str, Any], body: bytes) -> None:
        wire.check_hello(hello)
        self.hello = hello
        if hello["job"] != self._job:
            self._reject("wrong job")
            raise AuthError(f"connection for another job ({hello['job']!r})")
        self._hello_body = body
        self._nonce = os.urandom(wire.NONCE_SIZE)
        self.outgoing += wire.encode_map(wire.CHALLENGE, {"nonce": self._nonce})
        self._expect = wire.PROOF

    def _on_proof(self, proof: dict[str, Any]) -> None:
        assert self.hello is not None
        expected = wire.proof_mac(self._secret, b"client", self._hello_body, self._nonce)
        if not wire.macs_equal(wire.require(proof, "mac", bytes), expected):
            self._reject("authentication failed")
            raise AuthError(f"rank {self.hello['rank']} of group {self.hello['group']!r} failed authentication")
        mac = wire.proof_mac(self._secret, b"server", self._hello_body, self._nonce)
        welcome: dict[str, Any] = {"mac": mac}
        ended = self._verdict(self.hello) if self._verdict is not None else None
        if ended is not None:
            welcome["ended"] = ended[:1000]
        self.outgoing += wire.encode_map(wire.WELCOME, welcome)
        self.done = True

    def _reject(self, reason: str) -> None:
        self.outgoing += wire.encode_map(wire.REJECT, {"reason": reason})


def _flush(sock: socket.socket, hs: ServerHandshake, deadline: float) -> None:
    if hs.outgoing:
        data = bytes(hs.outgoing)
        hs.outgoing.clear()
        send_blocking(sock, data, deadline)
