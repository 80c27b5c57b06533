"""HMAC-SHA256 challenge-response on a fresh connection (both sides prove the job secret).

Connecting side                        accepting side
  HELLO {job, group, rank, kind, lane, nonce}  ->
                                       <-  CHALLENGE {nonce: fresh server nonce}
  PROOF {mac: HMAC(secret, "client" | hello | server nonce)}  ->
                                       <-  WELCOME {mac: HMAC(secret, "server" | hello | server nonce)}

The server nonce is fresh per connection, so a recorded handshake cannot be replayed;
the role tag keeps one side's proof from serving as the other's.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from . import wire
from .channel import recv_control, send_blocking
from .errors import AuthError, ProtocolError


def client_handshake(sock: socket.socket, secret: bytes, hello: dict[str, Any], deadline: float,
                     peer: str) -> None:
    """Run the connecting side; AuthError if the peer is not part of this job."""
    frame = wire.encode_map(wire.HELLO, hello)
    hello_body = frame[wire.PREFIX_SIZE:]
    send_blocking(sock, frame, deadline)
    try:
        _, challenge, _ = recv_control(sock, deadline, expect=wire.CHALLENGE)
        server_nonce = wire.require(challenge, "nonce", bytes)
        mac = wire.proof_mac(secret, b"client", hello_body, server_nonce)
        send_blocking(sock, wire.encode_map(wire.PROOF, {"mac": mac}), deadline)
        _, welcome, _ = recv_control(sock, deadline, expect=wire.WELCOME)
    except ProtocolError as exc:
        raise AuthError(f"handshake with {peer} failed: {exc}") from None
    except EOFError:
        raise AuthError(f"handshake with {peer} failed: connection closed (wrong job secret?)") from None
    expected = wire.proof_mac(secret, b"server", hello_body, server_nonce)
    if not wire.macs_equal(wire.require(welcome, "mac", bytes), expected):
        raise AuthError(f"{peer} does not know this job's secret (server proof failed)")


def server_handshake(sock: socket.socket, secret: bytes, job: str, deadline: float) -> dict[str, Any]:
    """Run the accepting side; returns the verified HELLO fields.

    Raises AuthError (wrong job or secret) or ProtocolError (garbage); on AuthError the
    peer is sent a REJECT first.
    """
    _, hello, hello_body = recv_control(sock, deadline, expect=wire.HELLO)
    wire.check_hello(hello)
    if hello["job"] != job:
        _reject(sock, "wrong job", deadline)
        raise AuthError(f"connection for another job ({hello['job']!r})")
    server_nonce = os.urandom(wire.NONCE_SIZE)
    send_blocking(sock, wire.encode_map(wire.CHALLENGE, {"nonce": server_nonce}), deadline)
    _, proof, _ = recv_control(sock, deadline, expect=wire.PROOF)
    expected = wire.proof_mac(secret, b"client", hello_body, server_nonce)
    if not wire.macs_equal(wire.require(proof, "mac", bytes), expected):
        _reject(sock, "authentication failed", deadline)
        raise AuthError(f"rank {hello['rank']} of group {hello['group']!r} failed authentication")
    mac = wire.proof_mac(secret, b"server", hello_body, server_nonce)
    send_blocking(sock, wire.encode_map(wire.WELCOME, {"mac": mac}), deadline)
    return hello


def _reject(sock: socket.socket, reason: str, deadline: float) -> None:
    try:
        send_blocking(sock, wire.encode_map(wire.REJECT, {"reason": reason}), deadline)
    except OSError:
        pass
