"""A job to suspend (Ctrl-Z) mid-wait: each rank prints "ready pid=<pid>", then for COUNT rounds
rank 1 sleeps 0.3 s before an all_sum and a non-blocking send to rank 0, which waits in the
all_sum and a non-blocking receive (the progress thread's wait) meanwhile; "done <sum>" at the
end. Stopped for longer than RINGDIST_TIMEOUT, it must not time out when continued.

usage: suspended.py COUNT
"""

import os
import sys
import time

import numpy as np

import ringdist as rd

g = rd.init()
count = int(sys.argv[1])
rd.barrier()
print(f"ready pid={os.getpid()}", flush=True)
total = 0.0
for k in range(count):
    if g.rank() == 1:
        time.sleep(0.3)
    total += float(rd.all_sum(np.ones(4))[0])
    if g.rank() == 1:
        rd.send(np.full(4, k), 0, async_op=True).wait()
    elif g.rank() == 0:
        assert rd.recv((4,), np.int64, 1, async_op=True).wait()[0] == k
print(f"done {total:g}", flush=True)
