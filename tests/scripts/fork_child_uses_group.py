"""Each rank forks a child that tries the world group, then exits normally (atexit runs in it);
the rank goes on with collectives on the same group and checks their results.

Prints `child: <Type>: <message>` for each of the child's attempts (from the child), then
`ok <sum>` from the rank.
"""
import os
import sys

import numpy as np

import ringdist as rd

g = rd.init()
x = np.full(1 << 16, g.rank() + 1, dtype=np.float32)
rd.all_gather(x)
pid = os.fork()
if pid == 0:
    for attempt in (lambda: rd.all_gather(x), lambda: rd.send(x, (g.rank() + 1) % g.size()),
                    lambda: g.split(0), lambda: rd.all_sum(x, group=rd.init())):
        try:
            attempt()
            print("child: no error", flush=True)
        except Exception as exc:
            print(f"child: {type(exc).__name__}: {exc}", flush=True)
    sys.exit(0)  # a normal exit: atexit handlers run in the child
_, status = os.waitpid(pid, 0)
assert status == 0, status
for _ in range(20):
    total = rd.all_sum(x)
    gathered = rd.all_gather(x)
n = g.size()
assert (total == n * (n + 1) / 2).all() and (gathered.reshape(n, -1)[:, 0] == np.arange(1, n + 1)).all()
rd.barrier()
print(f"ok {float(total[0]):g}", flush=True)
