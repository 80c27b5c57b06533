"""all_gather and all_sum of MiB-sized blocks in a loop, as a training step would; any error
propagates (a traceback, exit code 1), as in a user's program.

usage: collectives_until_lost.py [MiB]
Prints `ready pid=<pid>` once the first collective has run.
"""
import os
import sys

import numpy as np

import ringdist as rd

mib = float(sys.argv[1]) if len(sys.argv) > 1 else 4
g = rd.init()
x = np.full(int(mib * (1 << 20)) // 4, g.rank() + 1, dtype=np.float32)
rd.all_gather(x)
print(f"ready pid={os.getpid()}", flush=True)
while True:
    rd.all_gather(x)
    rd.all_sum(x)
