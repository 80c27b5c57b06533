"""Point-to-point between any two ranks: every ordered pair, ping-pong, 0 B and 32 MiB, a shifted exchange."""
import time

import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()
assert n >= 4, "run with at least 4 ranks"

# every ordered pair, each a different payload
for src in range(n):
    for dst in range(n):
        if src != dst:
            if r == src:
                rd.send(np.arange(10, dtype=np.int32) * (src * n + dst), dst)
            elif r == dst:
                got = rd.recv((10,), np.int32, src)
                assert np.array_equal(got, np.arange(10, dtype=np.int32) * (src * n + dst)), (src, dst)
rd.barrier()

# ping-pong of 1000 messages between ranks 0 and 1
if r in (0, 1):
    other = 1 - r
    x = np.zeros(1, dtype=np.int64)
    t0 = time.perf_counter()
    for i in range(1000):
        if r == 0:
            rd.send(np.array([i], dtype=np.int64), other)
            assert rd.recv_like(x, other)[0] == i + 1
        else:
            y = rd.recv_like(x, other)
            rd.send(y + 1, other)
    if r == 0:
        print(f"pingpong 1000 round trips in {time.perf_counter() - t0:.3f}s", flush=True)

# 0 bytes, a 0-d array, and 32 MiB, from rank 2 to rank 3
if r == 2:
    rd.send(np.zeros((0, 3), dtype=np.float64), 3)
    rd.send(np.float32(2.5), 3)
    rd.send(np.arange(8 << 20, dtype=np.float32), 3)
elif r == 3:
    assert rd.recv((0, 3), np.float64, 2).shape == (0, 3)
    assert rd.recv((), np.float32, 2) == np.float32(2.5)
    big = rd.recv((8 << 20,), np.float32, 2)
    assert np.array_equal(big, np.arange(8 << 20, dtype=np.float32))

# every rank sends to r+2 and receives from r-2, ordered so no pair blocks on each other
dst, src = (r + 2) % n, (r - 2) % n
payload = np.full(1 << 18, r, dtype=np.float32)  # 1 MiB: larger than a socket buffer
if (r // 2) % 2 == 0:
    rd.send(payload, dst)
    got = rd.recv_like(payload, src)
else:
    got = rd.recv_like(payload, src)
    rd.send(payload, dst)
assert (got == src).all()

# mixed: reductions on a split group interleaved with world gathers and messages
half = g.split(r % 2)
for i in range(10):
    s = rd.all_sum(np.array([r, i]), group=half)
    assert s.tolist() == [sum(q for q in range(n) if q % 2 == r % 2), i * half.size()]
    w = rd.all_gather(np.array([r * i]))
    assert w.tolist() == [q * i for q in range(n)]
    peer = half.size() - 1 - half.rank()
    if peer != half.rank():
        if half.rank() < peer:
            rd.send(np.array([i]), peer, group=half)
        else:
            assert rd.recv((1,), np.int64, peer, group=half)[0] == i

# argument errors
for bad, err in ((r, ValueError), (n, ValueError), (-1, ValueError), ("1", TypeError)):
    try:
        rd.send(np.zeros(1), bad)
    except err:
        pass
    else:
        raise AssertionError(f"send to {bad!r} accepted")
rd.barrier()
print(f"p2p ok rank={r}", flush=True)
