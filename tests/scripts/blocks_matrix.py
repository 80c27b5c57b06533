"""Every rooted, uneven and object call once, checked against numpy on every rank.

usage: blocks_matrix.py   (prints `blocks ok rank=R` on success)
"""
import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()
root = n - 1
x = (np.arange(4 * n * 3).reshape(4 * n, 3) + 100 * r).astype(np.float32)
inputs = [(np.arange(4 * n * 3).reshape(4 * n, 3) + 100 * q).astype(np.float32) for q in range(n)]

got = rd.all_to_all(x)
assert np.array_equal(got, np.concatenate([xq[4 * r:4 * r + 4] for xq in inputs]))
splits = [(r + p) % 3 for p in range(n)]
got = rd.all_to_all(np.full((sum(splits), 2), r, np.int32), splits=splits)
assert np.array_equal(got, np.concatenate([np.full(((q + r) % 3, 2), q, np.int32) for q in range(n)]))
got = rd.gather(x, root=root)
assert (got is None) == (r != root) and (got is None or np.array_equal(got, np.concatenate(inputs)))
got = rd.scatter(x if r == root else None, root=root)
assert np.array_equal(got, inputs[root][4 * r:4 * r + 4])
got = rd.reduce(x, root=0, op="max")
assert (got is None) == (r != 0) and (got is None or np.array_equal(got, inputs[-1]))
got = rd.all_gather(np.full((r, 2), r), uneven=True)
assert np.array_equal(got, np.concatenate([np.full((q, 2), q) for q in range(n)]))
got = rd.gather(np.full((r, 2), r, np.int16), root=0, uneven=True)
assert (got is None) == (r != 0) and (got is None or np.array_equal(got, np.concatenate([np.full((q, 2), q, np.int16)
                                                                                         for q in range(n)])))
got = rd.scatter([np.full((q + 1, 2, 2), q, ">f8") for q in range(n)] if r == root else None, root=root, uneven=True)
assert got.dtype == np.dtype(">f8") and np.array_equal(got, np.full((r + 1, 2, 2), r))
got = rd.all_gather_object({"r": r, "a": np.arange(r)})
assert [o["r"] for o in got] == list(range(n)) and all(np.array_equal(o["a"], np.arange(o["r"])) for o in got)
assert rd.broadcast_object({"root": root} if r == root else None, root=root) == {"root": root}
if n > 1:
    if r == 0:
        rd.send_object(("hello", np.ones(3)), n - 1)
    if r == n - 1:
        word, arr = rd.recv_object(0)
        assert word == "hello" and np.array_equal(arr, np.ones(3))
rd.barrier()
print(f"blocks ok rank={r}", flush=True)
