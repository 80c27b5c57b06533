"""Point-to-point between any two ranks: every ordered pair, ping-pong, 0 B and 32 MiB, a shifted
exchange, and every rank receiving from every other with recv_any."""
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

# any source: every rank sends each other rank three 1 MiB messages at once, and takes the
# 3 (n - 1) messages it is sent with recv_any (queued behind its own sends: on the progress thread)
sends = [rd.send(np.full(1 << 18, r * 10 + k, dtype=np.float32), dst, async_op=True)
         for k in range(3) for dst in range(n) if dst != r]
heard: dict[int, list[int]] = {}
for _ in range(3 * (n - 1)):
    src, x = rd.recv_any(1 << 18, np.float32)
    assert (x == x[0]).all() and int(x[0]) // 10 == src, (src, x[:2])
    heard.setdefault(src, []).append(int(x[0]) % 10)
for w in sends:
    w.wait()
assert heard == {s: [0, 1, 2] for s in range(n) if s != r}, heard
src, x = rd.recv_any((), np.float64) if r == 0 else (None, None)  # a 0-d message, from whichever rank
if r == 1:
    rd.send(np.float64(1.5), 0)
if r == 0:
    assert (src, float(x)) == (1, 1.5), (src, x)

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

# to itself: kept for its own receive (MPI allows it)
rd.send(np.array([r, 1]), r)
assert rd.recv((2,), np.int64, r).tolist() == [r, 1]
# argument errors
for bad, err in ((n, ValueError), (-1, ValueError), ("1", TypeError)):
    try:
        rd.send(np.zeros(1), bad)
    except err:
        pass
    else:
        raise AssertionError(f"send to {bad!r} accepted")
rd.barrier()
print(f"p2p ok rank={r}", flush=True)
