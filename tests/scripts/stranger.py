"""Rank 0 plays a stranger against every other rank's port; the job must go on, correct.

Connections: garbage bytes, a HELLO with a wrong secret, a half handshake that stops,
and a replay of a real client's frames. Then every rank checks an all_gather and
reports how many connections it refused.
"""
import os
import socket
import time

import numpy as np

import ringdist as rd
from ringdist import world, wire
from ringdist.channel import recv_control

g = rd.init()
r, n = g.rank(), g.size()
rd.barrier()
if r == 0:
    for peer in range(1, n):
        ip, port = g._addresses[peer][0]
        # 1. garbage
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(os.urandom(300))
        s.close()
        # 2. wrong secret: a well-formed HELLO, then a PROOF made with another key
        s = socket.create_connection((ip, port), timeout=5)
        hello = wire.make_hello(world._endpoint.job, "world", 0, "ring", 5, os.urandom(16))
        frame = wire.encode_map(wire.HELLO, hello)
        s.sendall(frame)
        _, challenge, _ = recv_control(s, time.monotonic() + 5, expect=wire.CHALLENGE)
        mac = wire.proof_mac(b"not the secret", b"client", frame[8:], challenge["nonce"])
        s.sendall(wire.encode_map(wire.PROOF, {"mac": mac}))
        try:
            kind, reply, _ = recv_control(s, time.monotonic() + 5)
            assert kind == wire.REJECT, kind
        except (EOFError, OSError, rd.ProtocolError):
            pass
        s.close()
        # 3. half handshake: HELLO and then silence (closed by us after a moment)
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(frame)
        time.sleep(0.1)
        s.close()
        # 4. replay: a proof valid for an old challenge, sent against a fresh one
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(frame)
        recv_control(s, time.monotonic() + 5, expect=wire.CHALLENGE)
        old_mac = wire.proof_mac(world._endpoint._secret, b"client", frame[8:], challenge["nonce"])
        s.sendall(wire.encode_map(wire.PROOF, {"mac": old_mac}))
        try:
            kind, _, _ = recv_control(s, time.monotonic() + 5)
            assert kind == wire.REJECT, kind
        except (EOFError, OSError, rd.ProtocolError):
            pass
        s.close()
time.sleep(0.5)
x = np.arange(1000, dtype=np.int64) + 1000 * r
got = rd.all_gather(x)
assert np.array_equal(got, np.concatenate([np.arange(1000) + 1000 * q for q in range(n)]))
print(f"correct; refused={world._endpoint.refused}", flush=True)
