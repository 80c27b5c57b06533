"""Every collective against a numpy reference, on the world and on split groups.

Results must also be bitwise identical on every rank (compared through a hash).
usage: collectives_matrix.py [BIG_BYTES]
"""
import hashlib
import sys

import numpy as np

import ringdist as rd
from refusal import check_refused

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", "bool"]

BITWISE = ("all_band", "all_bor", "all_bxor")  # integers and bool
world = rd.init()
r0, n0 = world.rank(), world.size()


def data(rank, shape, dtype, salt=0):
    count = int(np.prod(shape))
    values = (np.arange(count) * 5 + rank * 3 + salt) % 4  # small: float sums and products are exact
    return values.reshape(shape).astype(dtype)


def reference(op, arrays, dtype):
    stack = np.stack(arrays)
    bitwise = {"all_band": np.bitwise_and, "all_bor": np.bitwise_or, "all_bxor": np.bitwise_xor}.get(op)
    if bitwise is not None:
        return bitwise.reduce(stack, axis=0)
    if dtype == "bool":
        fold = {"all_sum": np.logical_or, "all_max": np.logical_or,
                "all_min": np.logical_and, "all_prod": np.logical_and}[op]
        return fold.reduce(stack, axis=0)
    if op == "all_sum":
        return np.sum(stack, axis=0, dtype=dtype)
    if op == "all_prod":
        return np.prod(stack, axis=0, dtype=dtype)
    if op == "all_max":
        return np.max(stack, axis=0)
    return np.min(stack, axis=0)


def same_everywhere(y, group):
    digest = np.frombuffer(hashlib.sha256(y.tobytes()).digest(), dtype=np.uint8)
    every = rd.all_gather(digest, group=group).reshape(group.size(), 32)
    assert (every == digest).all(), "results differ between ranks"


def check_group(group, label):
    r, n = group.rank(), group.size()
    cases = 0
    shapes = [(), (1,), (7,), (max(n - 1, 0),), (1024,), (64, 33)]
    for dtype in DTYPES:
        for shape in shapes:
            mine = data(r, shape, dtype)
            everyone = [data(q, shape, dtype) for q in range(n)]
            for op in ("all_sum", "all_max", "all_min", "all_prod") + (BITWISE if dtype[0] in "iub" else ()):
                y = getattr(rd, op)(mine, group=group) if hasattr(rd, op) else rd.all_reduce(mine, op[4:], group=group)
                want = reference(op, everyone, dtype)
                assert y.shape == mine.shape and y.dtype == mine.dtype, (label, op, dtype, shape)
                assert np.array_equal(y, want), (label, op, dtype, shape, y, want)
                same_everywhere(y, group)
                cases += 1
            root = (len(shape) + 1) % n
            b = rd.broadcast(mine, root=root, group=group)
            assert np.array_equal(b, everyone[root]) and b.dtype == mine.dtype, (label, dtype, shape)
            cases += 1
        for rows_per in (1, 3):
            shape = (n * rows_per, 5)
            mine = data(r, shape, dtype, salt=1)
            everyone = [data(q, shape, dtype, salt=1) for q in range(n)]
            y = rd.sum_scatter(mine, group=group)
            full = reference("all_sum", everyone, dtype)
            assert np.array_equal(y, full[r * rows_per:(r + 1) * rows_per]), (label, dtype, rows_per)
            op = ("all_prod", "all_max", "all_min", *BITWISE)[DTYPES.index(dtype) % 3 + (3 if dtype[0] in "iub" else 0)]
            y = rd.reduce_scatter(mine, op[4:], group=group)
            full = reference(op, everyone, dtype)
            assert np.array_equal(y, full[r * rows_per:(r + 1) * rows_per]), (label, op, dtype, rows_per)
            cases += 2
        # a non-contiguous view
        base = data(r, (8, 12), dtype)
        view = base[::2, 1::3]
        y = rd.all_sum(view, group=group)
        assert y.flags.c_contiguous
        assert np.array_equal(y, reference("all_sum", [data(q, (8, 12), dtype)[::2, 1::3] for q in range(n)], dtype))
        assert np.array_equal(base, data(r, (8, 12), dtype)), "input modified"
        cases += 1
    rd.barrier(group=group)
    if n > 1:  # an argument error fails the call on every rank, and breaks the group
        check_refused(group, lambda g: rd.sum_scatter(np.zeros(n + 1), group=g), ValueError,
                      "is not divisible by the group size")
    return cases


cases = check_group(world, "world")
if n0 >= 2:
    halves = world.split(r0 % 2)
    cases += check_group(halves, "halves")
big = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if big:
    count = big // 4
    mine = ((np.arange(count) + r0) % 7).astype(np.float32)
    y = rd.all_sum(mine)
    want = sum(((np.arange(count) + q) % 7).astype(np.float32) for q in range(n0))
    assert np.array_equal(y, want)
    same_everywhere(y, world)
    z = rd.broadcast(mine, root=n0 - 1)
    assert np.array_equal(z, ((np.arange(count) + n0 - 1) % 7).astype(np.float32))
    cases += 2
print(f"collectives ok rank={r0} size={n0} cases={cases}", flush=True)
