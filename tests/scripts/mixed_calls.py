"""Random sequences of every kind of call, each result checked against numpy on every rank.

usage: mixed_calls.py SEED STEPS

Every rank draws the same plan from SEED, step by step: the call (each collective, uneven
and object calls, point-to-point round a ring, several async calls waited in random order,
a new split group), the group (the world or one of the splits), the dtype, the size (0 B to
5 MB a rank) and the root. Each rank's input is drawn from (SEED, step, world rank), so every
rank knows what every other rank passed and checks its result element for element. Values
are small integers, exact in every dtype and in any order of summation; reductions of
fractional floats are checked instead to give the same bits on every rank, and a rooted
reduce the bits of the all-reduce. Prints `ok STEPS steps` at the end; anything else is a
failure (an assertion names the rank, the step and the call).
"""
import sys
import zlib

import numpy as np

import ringdist as rd

SEED, STEPS = int(sys.argv[1]), int(sys.argv[2])
DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.int16]
SIZES = [0, 1, 3, 17, 256, 1024, 4096, 16384, 70_000, 300_000, 1_100_000, 2_500_000, 5_000_000]
CALLS = {"all_gather": 10, "uneven": 5, "sum": 10, "max": 4, "min": 4, "prod": 3, "sum_scatter": 7, "broadcast": 7,
         "gather": 6, "scatter": 7, "reduce": 6, "all_to_all": 7, "splits": 6, "barrier": 3, "objects": 3,
         "broadcast_object": 3, "p2p": 5, "split": 2, "async": 6, "bits": 6}
NAMES = list(CALLS)
WEIGHTS = np.array([CALLS[k] for k in NAMES], float) / sum(CALLS.values())

world = rd.init()
N, R = world.size(), world.rank()
groups = {"world": (world, list(range(N)))}  # name -> (group or None here, world rank of each group rank)


def data(step, rank, rows, tail, dtype, salt=0):
    """Rank `rank`'s input at this step: small integers, the same wherever it is drawn."""
    return np.random.default_rng([SEED, step, rank, salt]).integers(0, 5, size=(rows,) + tail).astype(dtype)


def strided(a, step):
    """Every third step a non-contiguous view of the same values."""
    if a.ndim and a.shape[0] > 1 and step % 3 == 0:
        wide = np.empty((a.shape[0] * 2,) + a.shape[1:], a.dtype)
        wide[::2] = a
        return wide[::2]
    return a


def same(got, want, step, call):
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape and \
        np.array_equal(got, want), (f"rank {R}, step {step}, {call}", getattr(got, "shape", got), want.shape)


def summed(xs, dtype):
    return np.add.reduce(np.stack(xs), axis=0, dtype=dtype).astype(dtype)


for step in range(STEPS):
    plan = np.random.default_rng([SEED, step, 4242])  # the same draws on every rank
    call = NAMES[plan.choice(len(NAMES), p=WEIGHTS)]
    dtype = DTYPES[plan.integers(len(DTYPES))]
    nbytes = SIZES[plan.integers(len(SIZES))]
    tail = () if plan.random() < .6 else (int(plan.integers(1, 4)),)
    rows = nbytes // (np.dtype(dtype).itemsize * int(np.prod(tail)))
    name = "world" if call == "split" else list(groups)[plan.integers(len(groups))]
    g, ranks = groups[name]
    pick = int(plan.integers(1 << 30))
    if g is None:  # this rank is not in the group the plan picked
        continue
    n, r = g.size(), g.rank()
    root = pick % n
    kw = {"group": g, "timeout": 60}
    mine = data(step, ranks[r], rows, tail, dtype)
    every = [data(step, ranks[q], rows, tail, dtype) for q in range(n)]
    if call == "all_gather":
        same(rd.all_gather(strided(mine, step), **kw), np.concatenate(every), step, call)
    elif call == "uneven":
        def count(q):
            return int(np.random.default_rng([SEED, step, 99, ranks[q]]).integers(0, rows + 2))
        xs = [data(step, ranks[q], count(q), tail, dtype) for q in range(n)]
        same(rd.all_gather(xs[r], uneven=True, **kw), np.concatenate(xs), step, call)
    elif call in ("sum", "max", "min", "prod"):
        xs = [np.minimum(x, 1) + 1 for x in every] if call == "prod" else every
        xs = [x.astype(dtype) for x in xs]
        want = xs[0]
        for x in xs[1:]:
            want = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}[call](want, x)
        same(getattr(rd, "all_" + call)(strided(xs[r], step), **kw), want.astype(dtype), step, call)
    elif call == "bits":  # fractional floats: the same bits everywhere, and the rooted reduce's too
        op = ("sum", "max", "min", "prod")[pick % 4]
        x = (np.random.default_rng([SEED, step, ranks[r], 3]).standard_normal((rows,) + tail) * 1e3).astype(
            np.float32 if pick % 2 else np.float64)
        out = getattr(rd, "all_" + op)(strided(x, step), **kw)
        crcs = rd.all_gather(np.array([zlib.crc32(out.tobytes())], np.int64), **kw)
        assert len(set(crcs.tolist())) == 1, (f"rank {R}, step {step}, all_{op}: bits differ by rank", crcs)
        rooted = rd.reduce(x, root=root, op=op, **kw)
        assert r != root or rooted.tobytes() == out.tobytes(), (f"rank {R}, step {step}, reduce({op}) bits")
    elif call == "sum_scatter":
        block = rows // n
        xs = [x[:block * n] for x in every]
        same(rd.sum_scatter(xs[r], **kw), summed(xs, dtype)[r * block:(r + 1) * block], step, call)
    elif call == "broadcast":
        same(rd.broadcast(every[root] if r == root else np.zeros_like(mine), root=root, **kw), every[root], step, call)
    elif call == "gather":
        got = rd.gather(mine, root=root, **kw)
        if r == root:
            same(got, np.concatenate(every), step, call)
        else:
            assert got is None, (f"rank {R}, step {step}, gather: {type(got)} off the root")
    elif call == "scatter":
        block = rows // n
        whole = every[root][:block * n]
        same(rd.scatter(strided(whole, step) if r == root else None, root=root, **kw),
             whole[r * block:(r + 1) * block], step, call)
    elif call == "reduce":
        got = rd.reduce(mine, root=root, op="sum", **kw)
        if r == root:
            same(got, summed(every, dtype), step, call)
        else:
            assert got is None, (f"rank {R}, step {step}, reduce: {type(got)} off the root")
    elif call == "all_to_all":
        block = rows // n
        xs = [x[:block * n] for x in every]
        same(rd.all_to_all(strided(xs[r], step), **kw),
             np.concatenate([x[r * block:(r + 1) * block] for x in xs]), step, call)
    elif call == "splits":
        def counts(q):
            return [int(k) for k in np.random.default_rng([SEED, step, 7, ranks[q]]).integers(0, rows // n + 2, size=n)]
        xs = [data(step, ranks[q], sum(counts(q)), tail, dtype) for q in range(n)]

        def block(q, p):
            c = counts(q)
            return xs[q][sum(c[:p]):sum(c[:p + 1])]
        same(rd.all_to_all(xs[r], splits=counts(r), **kw), np.concatenate([block(q, r) for q in range(n)]), step, call)
    elif call == "barrier":
        rd.barrier(**kw)
    elif call == "objects":
        things = [{"rank": ranks[q], "a": every[q][:5000]} for q in range(n)]
        got = rd.all_gather_object(things[r], **kw)
        assert len(got) == n and all(o["rank"] == ranks[q] and np.array_equal(o["a"], things[q]["a"])
                                     for q, o in enumerate(got)), (f"rank {R}, step {step}, all_gather_object")
    elif call == "broadcast_object":
        thing = {"a": every[root][:5000], "s": "z" * (rows % 300)}
        got = rd.broadcast_object(thing if r == root else None, root=root, **kw)
        assert got["s"] == thing["s"] and np.array_equal(got["a"], thing["a"]), (f"rank {R}, step {step}, {call}")
    elif call == "p2p" and n > 1:  # a shift round the group's ring: an async send, a blocking recv
        handle = rd.send(mine, (r + 1) % n, group=g, async_op=True)
        same(rd.recv(mine.shape, mine.dtype, (r - 1) % n, group=g, timeout=60), every[(r - 1) % n], step, call)
        handle.wait()
    elif call == "split":  # every world rank takes part; some get no group
        colors = np.random.default_rng([SEED, step, 5]).integers(-1, 1 + pick % 3, size=N)
        sub = world.split(color=int(colors[R]))
        members = [int(v) for v in rd.all_gather(np.array([R], np.int64), group=sub)] if sub is not None else None
        groups[f"split {step}"] = (sub, members)
        if len(groups) > 6:  # close the oldest split
            oldest = [k for k in groups if k != "world"][0]
            if groups[oldest][0] is not None:
                groups[oldest][0].close()
            del groups[oldest]
    elif call == "async":  # several outstanding, waited in random order
        handles = []
        for j in range(2 + pick % 3):
            xs = [data(step, ranks[q], rows, tail, dtype, salt=1 + j) for q in range(n)]
            kind = ("all_gather", "sum", "broadcast")[(pick >> (2 * j)) % 3]
            if kind == "all_gather":
                handles.append((rd.all_gather(xs[r], async_op=True, **kw), np.concatenate(xs)))
            elif kind == "sum":
                handles.append((rd.all_sum(xs[r], async_op=True, **kw), summed(xs, dtype)))
            else:
                handles.append((rd.broadcast(xs[root] if r == root else np.zeros_like(xs[r]), root=root,
                                             async_op=True, **kw), xs[root]))
        for j in plan.permutation(len(handles)):
            same(handles[j][0].wait(), handles[j][1], step, call)
print(f"ok {STEPS} steps", flush=True)
