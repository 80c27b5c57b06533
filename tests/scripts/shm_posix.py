"""The shared-memory link's portable backend in a launched job (run with RINGDIST_SHM=posix).

usage: shm_posix.py once | loop MiB | rank1-posix
Every mode prints `backend=<name> shm=<bool> job=<job id> socket=<path> dir=<mode of its directory>`.
once: then `sum ok` after a 1 MiB all_sum gives the right answer.
loop: then `ready pid=<pid>`, and all_gathers of MiB per rank until a RingError, which it
  prints as `raised <Type> at <unix time>: <message>` before exiting 1 (SIGTERM is
  ignored, so what a rank prints is its own detection, not the launcher stopping it).
rank1-posix: RINGDIST_SHM=posix on rank 1 only (the others choose for themselves), then as once.
"""
import os
import signal
import stat
import sys
import time

if sys.argv[1] == "rank1-posix":
    os.environ["RINGDIST_SHM"] = "posix" if os.environ["RINGDIST_RANK"] == "1" else "1"

import numpy as np  # noqa: E402

import ringdist as rd  # noqa: E402

g = rd.init()
ep = g.endpoint
path = ep.local_path
mode = oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)) if path else "-"
print(f"backend={ep.local_backend} shm={g.shm is not None} job={ep.job} socket={path} dir={mode}", flush=True)
if sys.argv[1] != "loop":
    x = np.full(1 << 18, g.rank() + 1, dtype=np.float32)
    assert (rd.all_sum(x) == sum(range(1, g.size() + 1))).all()
    print("sum ok", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, lambda *a: None)
x = np.full(int(float(sys.argv[2]) * (1 << 20)) // 4, g.rank() + 1, dtype=np.float32)
rd.all_gather(x)
print(f"ready pid={os.getpid()}", flush=True)
try:
    for _ in range(1_000_000):
        rd.all_gather(x)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__} at {time.time():.3f}: {exc}", flush=True)
    time.sleep(0.3)
    os._exit(1)
