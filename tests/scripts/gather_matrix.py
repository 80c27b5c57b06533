"""all_gather over every foundation dtype and shape; checks against np.concatenate on every rank.

usage: gather_matrix.py [BIG_BYTES]   (BIG_BYTES: per-rank size of one large case, 0 to skip)
"""
import sys

import numpy as np

import ringdist as rd

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", "bool"]
SHAPES = [(), (7,), (3, 5), (0, 4)]


def value(rank, shape, dtype):
    n = int(np.prod(shape))
    return ((np.arange(n) * 7 + rank * 13) % 100).reshape(shape).astype(dtype)


g = rd.init()
r, n = g.rank(), g.size()
checked = 0
for dtype in DTYPES:
    for shape in SHAPES:
        x = value(r, shape, dtype)
        got = rd.all_gather(x)
        want = np.concatenate([np.atleast_1d(value(q, shape, dtype)) for q in range(n)])
        assert got.dtype == want.dtype and got.shape == want.shape, (dtype, shape, got.shape, want.shape)
        assert np.array_equal(got, want), (dtype, shape)
        assert np.array_equal(x, value(r, shape, dtype)), "input modified"
        checked += 1
    # a non-contiguous view: every other column of a transposed block
    base = value(r, (6, 10), dtype)
    view = base.T[::2, 1:]
    got = rd.all_gather(view)
    want = np.concatenate([value(q, (6, 10), dtype).T[::2, 1:] for q in range(n)])
    assert got.flags.c_contiguous and np.array_equal(got, want), dtype
    checked += 1
big = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if big:
    x = np.full(big // 8, r, dtype=np.float64)
    x[::4097] = -r
    got = rd.all_gather(x)
    want = np.concatenate([np.where(np.arange(big // 8) % 4097 == 0, -q, q).astype(np.float64) for q in range(n)])
    assert np.array_equal(got, want)
    checked += 1
print(f"gather ok rank={r} size={n} cases={checked}", flush=True)
