"""Group.split semantics on the world, checked with all_gather over every new group.

Prints `split ok ...` and the median time of one split when every check passed.
"""
import gc
import os
import time

import numpy as np

import ringdist as rd
from refusal import check_refused

world = rd.init()
r, n = world.rank(), world.size()
me = np.array([r], dtype=np.int64)


def members(group):
    """World ranks of a group's members, in group order (via a real all_gather)."""
    return rd.all_gather(me, group=group).tolist()


def expect(group, want):
    assert group is not None, want
    got = members(group)
    assert got == want, (got, want)
    assert group.rank() == want.index(r) and group.size() == len(want)


# rank % 2 and rank // 2
expect(world.split(r % 2), [q for q in range(n) if q % 2 == r % 2])
expect(world.split(r // 2), [q for q in range(n) if q // 2 == r // 2])
# reversed keys: order by descending parent rank
expect(world.split(0, key=n - r), list(reversed(range(n))))
# equal keys: ties keep parent order
expect(world.split(r % 2, key=7), [q for q in range(n) if q % 2 == r % 2])
# negative keys mean "my parent rank"
expect(world.split(1, key=-1), list(range(n)))
expect(world.split(1, key=-(r + 3)), list(range(n)))
# color < 0: no group on those ranks, the others form one
g = world.split(-1 if r % 3 == 0 else 5)
if r % 3 == 0:
    assert g is None
else:
    expect(g, [q for q in range(n) if q % 3 != 0])
# singleton colors
solo = world.split(100 + r)
expect(solo, [r])
assert rd.all_sum(np.arange(3), group=solo).tolist() == [0, 1, 2]
sub_solo = solo.split(0)
expect(sub_solo, [r])
# nested three deep: halves, then halves of halves, then pairs reversed
a = world.split(r % 2)
a_members = [q for q in range(n) if q % 2 == r % 2]
b = a.split(a.rank() // 2)
b_members = [q for q in a_members if a_members.index(q) // 2 == a.rank() // 2]
expect(b, b_members)
c = b.split(0, key=b.size() - b.rank())
expect(c, list(reversed(b_members)))
for grp, want in ((c, list(reversed(b_members))), (a, a_members), (world, list(range(n))), (b, b_members)):
    expect(grp, want)
# bad arguments: refused on every rank, and the group they were given to is broken
for color, key in (("1", -1), (1.5, -1), (None, -1), (True, -1), (0, 2.0)):
    check_refused(world, lambda g: g.split(color, key), TypeError, "must be an integer")

# 2-D mesh: rows and columns used in an interleaved order the members agree on
cols = 2 if n % 2 == 0 else 1
row_g, col_g = world.split(r // cols, key=r % cols), world.split(r % cols, key=r // cols)
row_w = [q for q in range(n) if q // cols == r // cols]
col_w = [q for q in range(n) if q % cols == r % cols]
rng = np.random.default_rng(1234)
for step in range(30):
    kind = rng.integers(0, 3)  # same sequence on every rank
    if kind == 0:
        assert rd.all_gather(me, group=row_g).tolist() == row_w
    elif kind == 1:
        assert rd.all_sum(me * 10, group=col_g).tolist() == [10 * sum(col_w)]
    else:
        assert rd.all_gather(me + step).tolist() == [q + step for q in range(n)]

# 200 split/close cycles: no file descriptors leak
def open_fds():
    return len(os.listdir("/proc/self/fd"))


rd.barrier()
time.sleep(0.2)
before = open_fds()
times = []
for i in range(200):
    t0 = time.perf_counter()
    s = world.split(r % 2)
    times.append(time.perf_counter() - t0)
    with s:
        if i % 50 == 0:
            expect(s, [q for q in range(n) if q % 2 == r % 2])
def settled_fds(before):
    """Open descriptors once back to `before` (handshake threads close theirs asynchronously), or after 2.5 s."""
    rd.barrier()
    for _ in range(50):
        now = open_fds()
        if now <= before:
            break
        time.sleep(0.05)
    return now


after = settled_fds(before)
assert after <= before, f"fds before {before}, after {after}"

# 100 splits dropped without close(): collected, they release what they held too
for i in range(100):
    s = world.split(r % 2)
    assert rd.all_sum(me, group=s).tolist() == [sum(q for q in range(n) if q % 2 == r % 2)]
    del s
gc.collect()
dropped = settled_fds(before)
assert dropped <= before, f"fds before {before}, after 100 splits dropped unclosed {dropped}"
times.sort()
print(f"split ok rank={r} size={n} fds {before}->{max(after, dropped)} split_median_ms={times[100] * 1e3:.2f}", flush=True)
