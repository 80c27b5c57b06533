"""Every small collective on the table's choice at this group size, results checked against numpy.

Float32 random inputs (seeded by rank): reductions must give every rank the same bytes
(compared through an all_gather of each rank's result) and numpy's answer to rounding.
Prints `ok rank=R sockets=S` (S: the sockets this process holds at the end).
"""

import os
import stat

import numpy as np

import ringdist as rd


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode)
        except FileNotFoundError:
            continue
    return count


g = rd.init()
n, r = g.size(), g.rank()
inputs = [np.random.default_rng(q).standard_normal(3001).astype(np.float32) for q in range(n)]
mine = inputs[r]
rd.barrier()
for count in (0, 1, 7, 3001):
    got = rd.all_gather(mine[:count])
    assert np.array_equal(got, np.concatenate([x[:count] for x in inputs])), (r, count)
for count in (1, 1000, 3001):
    for x in (mine[:count], inputs[r][:2 * count:2] if 2 * count <= 3001 else mine[:count]):
        total = rd.all_sum(x)
        every = rd.all_gather(total[None])
        assert all(row.tobytes() == total.tobytes() for row in every), f"rank {r}: all_sum differs between ranks"
        want = np.sum([y[:count] if x.flags.c_contiguous else y[:2 * count:2] for y in inputs], axis=0, dtype=np.float64)
        assert np.allclose(total, want, rtol=1e-4, atol=1e-3), (r, count)
assert rd.all_max(np.arange(5) * r).tolist() == (np.arange(5) * (n - 1)).tolist()
root = n // 2
b = rd.broadcast(inputs[r][:100], root=root)
assert b.tobytes() == inputs[root][:100].tobytes()
part = rd.sum_scatter(np.arange(4 * n, dtype=np.int64) + r)
assert part.tolist() == [n * v + n * (n - 1) // 2 for v in range(4 * r, 4 * r + 4)], part
rd.barrier()
print(f"ok rank={r} sockets={sockets()}", flush=True)
