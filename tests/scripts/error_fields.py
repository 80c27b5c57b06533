"""One rank kills itself (SIGKILL) mid-job; every other rank prints what its error carries, as JSON.
SIGTERM is ignored, so the launcher's stop (within its --grace) does not cut that short.

    error_fields.py VICTIM
"""
import json
import os
import signal
import sys

import numpy as np

import ringdist as rd

signal.signal(signal.SIGTERM, lambda *a: None)
victim = int(sys.argv[1])
g = rd.init()
rd.barrier()
if g.rank() == victim:
    os.kill(os.getpid(), signal.SIGKILL)
try:
    rd.all_sum(np.ones(1 << 18))
except rd.RingError as exc:
    fields = {name: getattr(exc, name) for name in ("rank", "group", "op", "peer", "address", "origin")}
    print("fields " + json.dumps({"error": type(exc).__name__, **fields}), flush=True)
    sys.exit(3)
print("no error", flush=True)
