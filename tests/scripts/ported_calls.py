"""The calls MPI code ports, together in one job: a manager handing tasks to whichever worker
asks (recv_object_any), reduce_scatter with counts, all_maxloc, a periodic Grid with a
sendrecv halo along each dimension and its rows as sub-groups, async calls and wait_all.
Every result is checked; rank 0 prints `ported ok n=N dims=D` at the end."""
import time
import numpy as np, ringdist as rd
t0 = time.monotonic()
g = rd.init(); r, n = g.rank(), g.size()
# manager/worker with recv_object_any
if r == 0:
    tasks, done, working = list(range(4 * n)), {}, n - 1
    while working:
        src, res = rd.recv_object_any()
        if res is not None:
            done[res[0]] = res[1]
        if tasks:
            rd.send_object(tasks.pop(), src)
        else:
            rd.send_object(None, src); working -= 1
    assert done == {t: t * t for t in range(4 * n)}, len(done)
else:
    res = None
    while True:
        rd.send_object(res, 0)
        t = rd.recv_object(0)
        if t is None: break
        res = (t, t * t)
rd.barrier()
# reduce_scatter with counts
counts = [(q % 3) for q in range(n)]
x = np.arange(sum(counts), dtype=np.int64) * (r + 1)
y = rd.reduce_scatter(x, counts=counts)
start = sum(counts[:r])
assert (y == np.arange(start, start + counts[r]) * (n * (n + 1) // 2)).all()
# maxloc
v, w = rd.all_maxloc(np.array([r % 5, -r]))
assert v.tolist() == [4, 0] and w.tolist() == [4, 0], (v, w)
# grid + sendrecv halo
dims = rd.dims_create(n, 2)
grid = rd.Grid(dims, periodic=True)
for d in range(2):
    src, dst = grid.shift(d)
    got = rd.sendrecv(np.array([r]), dst, src)
    assert int(got[0]) == src
row = grid.sub((False, True))
assert rd.all_gather(np.array([r]), group=row).size == dims[1]
# async + wait_all
works = [rd.all_sum(np.ones(3), async_op=True), rd.barrier(async_op=True)]
out = rd.wait_all(works)
assert out[0].tolist() == [n] * 3
if r == 0:
    print(f"ported ok n={n} dims={dims} in {time.monotonic() - t0:.1f}s", flush=True)
