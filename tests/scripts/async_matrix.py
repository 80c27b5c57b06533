"""Every operation with async_op=True, checked against numpy; outstanding handles waited in reverse;
async and blocking calls mixed; a 4 MiB ring shift of isend/irecv on every rank at once; an isend
followed by a collective while its receiver runs a blocking recv first."""
import threading

import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()

# Blocking calls start no thread.
before = threading.active_count()
rd.all_gather(np.arange(4) + r)
rd.all_sum(np.ones(3))
rd.barrier()
if n > 1:
    if r == 0:
        rd.send(np.arange(3), 1)
    elif r == 1:
        rd.recv((3,), np.int64, 0)
assert threading.active_count() == before, (before, threading.active_count())
print(f"no thread when unused rank={r}", flush=True)

x = np.arange(6, dtype=np.float64) + r
ranks = np.arange(n, dtype=np.float64)[:, None]
every = np.arange(6, dtype=np.float64)[None, :] + ranks
works = {
    "all_gather": (rd.all_gather(x, async_op=True), every.reshape(-1)),
    "all_sum": (rd.all_sum(x, async_op=True), every.sum(0)),
    "all_max": (rd.all_max(x, async_op=True), every.max(0)),
    "all_min": (rd.all_min(x, async_op=True), every.min(0)),
    "all_prod": (rd.all_prod(x, async_op=True), every.prod(0)),
    "sum_scatter": (rd.sum_scatter(np.tile(x, n), async_op=True), every.sum(0)),
    "broadcast": (rd.broadcast(x, n - 1, async_op=True), every[n - 1]),
    "barrier": (rd.barrier(async_op=True), None),
}
assert threading.active_count() == before + 1, "one progress thread"
for name, (w, want) in reversed(list(works.items())):  # waited in reverse order of issue
    got = w.wait(timeout=30)
    assert w.done()
    if want is None:
        assert got is None, name
    else:
        assert np.array_equal(got, want), (name, got, want)
print(f"collectives ok rank={r}", flush=True)

# many outstanding, waited in reverse; blocking calls queue behind them
many = [rd.all_sum(np.full(5, i + r, dtype=np.int64), async_op=True) for i in range(50)]
mid = rd.all_gather(np.array([r]))  # blocking, behind 50 outstanding
assert mid.tolist() == list(range(n))
assert all(w.done() for w in many), "a blocking call completes after every earlier operation"
for i, w in reversed(list(enumerate(many))):
    assert w.wait().tolist() == [sum(i + q for q in range(n))] * 5
print(f"many ok rank={r}", flush=True)

if n > 1:
    # a ring shift every rank runs at once; 4 MiB does not fit the socket buffers
    big = np.full(1 << 20, r, dtype=np.float32)
    s = rd.send(big, (r + 1) % n, async_op=True)
    got = rd.recv_like(big, (r - 1) % n, async_op=True)
    assert s.wait(timeout=60) is big  # (as MLX's send, x once sent)
    assert (got.wait(timeout=60) == (r - 1) % n).all()
    # recv_like, and async messages queued in order between one pair
    if r == 0:
        sends = [rd.send(np.full(3, i), 1, async_op=True) for i in range(5)]
        for w in sends:
            w.wait()
    elif r == 1:
        recvs = [rd.recv_like(np.zeros(3, dtype=np.int64), 0, async_op=True) for i in range(5)]
        assert [w.wait()[0] for w in reversed(recvs)] == [4, 3, 2, 1, 0]
    # rank 0: isend(big) then a collective; rank 1: a blocking recv first, then the collective
    y = np.ones(4)
    if r == 0:
        s = rd.send(big, 1, async_op=True)
        total = rd.all_sum(y)
        s.wait()
    elif r == 1:
        assert (rd.recv_like(big, 0) == 0).all()
        total = rd.all_sum(y)
    else:
        total = rd.all_sum(y)
    assert (total == n).all()
    # the same with split, whose new group connects while rank 0's send still moves
    if r == 0:
        s = rd.send(big, 1, async_op=True)
        whole = g.split(0)
        s.wait()
    else:
        if r == 1:
            assert (rd.recv_like(big, 0) == 0).all()
        whole = g.split(0)
    assert rd.all_sum(np.ones(1), group=whole)[0] == n
    whole.close()
    # a recv posted before a collective does not hold it up (MPI: irecv; barrier; send; wait)
    if r in (0, 1):
        pending = rd.recv((4,), np.int64, 1 - r, async_op=True)
    rd.barrier()
    if r in (0, 1):
        rd.send(np.arange(4) * (r + 1), 1 - r)
        assert pending.wait(timeout=30).tolist() == (np.arange(4) * (2 - r)).tolist()
    print(f"p2p ok rank={r}", flush=True)

    # a wait that runs out says the operation is outstanding, and the handle stays valid
    if r == 0:
        w = rd.recv((2,), np.int64, 1, async_op=True)
        try:
            w.wait(timeout=0.2)
            raise AssertionError("wait(timeout=0.2) returned before rank 1 sent")
        except rd.RingTimeoutError as exc:
            assert "recv on group 'world' is still outstanding after wait(timeout=0.2)" in str(exc), exc
        assert not w.done()
    rd.barrier()  # rank 0: queued behind its recv, and done without waiting for it
    if r == 1:
        rd.send(np.array([7, 8]), 0)
    elif r == 0:
        assert w.wait(timeout=30).tolist() == [7, 8] and w.done()
    print(f"wait timeout ok rank={r}", flush=True)

half = g.split(r % 2)
w = rd.all_sum(np.array([r]), group=half, async_op=True)
assert w.wait()[0] == sum(q for q in range(n) if q % 2 == r % 2)
if half.size() > 1:  # closing a group ends what is outstanding on it
    w = rd.recv((1,), np.int64, (half.rank() + 1) % half.size(), group=half, async_op=True)
    half.close()
    try:
        w.wait(timeout=10)
        raise AssertionError("a recv outstanding at close returned")
    except rd.RingError as exc:
        assert "closed with the operation outstanding" in str(exc) and "recv on group 'world/1:" in str(exc), exc
half.close()
print(f"async ok rank={r} size={n}", flush=True)
