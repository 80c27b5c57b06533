"""A stranger floods ranks 1 and 2 with 1000 connections while the job runs collectives.

Rank 0 runs the stranger in a thread: garbage, half handshakes, wrong secrets and
replays of a real client's frames. Every result is checked; each rank reports its
open file descriptors before and after, and how many connections it refused.
"""
import os
import socket
import threading
import time

import numpy as np

import ringdist as rd
from ringdist import world, wire
from ringdist.channel import recv_control


def open_fds():
    return len(os.listdir("/proc/self/fd"))


g = rd.init()
r, n = g.rank(), g.size()
rd.barrier()
before = open_fds()
attempts = {"made": 0}


def stranger():
    secret = world._endpoint._secret
    job = world._endpoint.job
    targets = [g._addresses[p][0] for p in range(1, n)]
    held = []
    for i in range(1000):
        ip, port = targets[i % len(targets)]
        kind = i % 4
        try:
            s = socket.create_connection((ip, port), timeout=5)
        except OSError:
            continue
        attempts["made"] += 1
        try:
            hello = wire.make_hello(job, "world", 0, "ring", 9, os.urandom(16))
            frame = wire.encode_map(wire.HELLO, hello)
            if kind == 0:  # garbage
                s.sendall(os.urandom(64))
            elif kind == 1:  # half a handshake, then silence: held open, 50 at a time
                s.sendall(frame[:20])
                held.append(s)
                if len(held) >= 50:
                    for h in held:
                        h.close()
                    held.clear()
                continue
            elif kind == 2:  # wrong secret
                s.sendall(frame)
                _, ch, _ = recv_control(s, time.monotonic() + 5, expect=wire.CHALLENGE)
                s.sendall(wire.encode_map(wire.PROOF, {"mac": wire.proof_mac(b"guess", b"client", frame[8:], ch["nonce"])}))
            else:  # replay: a proof made for an earlier challenge
                s.sendall(frame)
                recv_control(s, time.monotonic() + 5, expect=wire.CHALLENGE)
                stale = wire.proof_mac(secret, b"client", frame[8:], os.urandom(16))
                s.sendall(wire.encode_map(wire.PROOF, {"mac": stale}))
            s.settimeout(2)
            s.recv(100)
        except (OSError, rd.RingError, EOFError):
            pass
        if s not in held:
            s.close()
    for h in held:
        h.close()


flood = threading.Thread(target=stranger) if r == 0 else None
if flood:
    flood.start()
rng = np.random.default_rng(7)
ops = 0
deadline_flag = np.zeros(1, dtype=np.int64)
while True:
    size = int(rng.integers(0, 200_000))
    x = (np.arange(size) % 13 + r).astype(np.int32)
    got = rd.all_gather(x)
    assert np.array_equal(got, np.concatenate([(np.arange(size) % 13 + q).astype(np.int32) for q in range(n)]))
    s = rd.all_sum(x)
    assert np.array_equal(s, sum((np.arange(size) % 13 + q).astype(np.int32) for q in range(n)))
    ops += 2
    deadline_flag[0] = 1 if (flood is not None and not flood.is_alive()) else 0
    if rd.all_max(deadline_flag)[0]:
        break
rd.barrier()
for _ in range(100):
    after = open_fds()
    if after <= before:
        break
    time.sleep(0.1)
print(f"flood done rank={r} ops={ops} fds {before}->{after} refused={world._endpoint.refused} "
      f"connections={attempts['made']}", flush=True)
