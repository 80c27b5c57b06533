"""Every rank joins the world and prints "pid <pid>"; after a barrier, rank FAIL_RANK exits with CODE
and the others sleep (so they are stopped by the launcher, not by a failed collective).

usage: fail_after_init.py FAIL_RANK CODE [SLEEP] [ignored...]
"""
import os
import sys
import time

import ringdist as rd

fail_rank, code = int(sys.argv[1]), int(sys.argv[2])
sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
g = rd.init()
print(f"pid {os.getpid()}", flush=True)
rd.barrier()
if g.rank() == fail_rank:
    print(f"failing with {code}", file=sys.stderr, flush=True)
    sys.exit(code)
time.sleep(sleep)
