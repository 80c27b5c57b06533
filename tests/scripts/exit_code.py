"""Rank FAIL_RANK exits with CODE (or kills itself with SIGKILL if CODE is 'kill'); the others sleep.

usage: exit_code.py FAIL_RANK CODE [SLEEP]
Every rank first prints "pid <pid>"; FAIL_RANK -1 means no rank fails.
"""

import os
import signal
import sys
import time

fail_rank, code = int(sys.argv[1]), sys.argv[2]
sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
print(f"pid {os.getpid()}", flush=True)
if int(os.environ["RINGDIST_RANK"]) == fail_rank:
    time.sleep(0.3)
    if code == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print(f"failing with {code}", file=sys.stderr, flush=True)
    sys.exit(int(code))
time.sleep(sleep)
