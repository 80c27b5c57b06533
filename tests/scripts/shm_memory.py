"""Peak resident memory of one large collective over shared memory, over the rank's baseline.

usage: shm_memory.py all_gather|all_sum MIB   (MIB: the result's size on each rank)
Prints `shm=<bool> in=<MiB> out=<MiB> peak=<MiB>` on every rank: the peak (VmHWM, reset to
the current RSS after the group is made) minus the RSS then, so it counts the input, the
result, every shared segment touched, and any other memory the call needed.
"""
import sys

import numpy as np

import ringdist as rd


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


op, mib = sys.argv[1], int(sys.argv[2])
g = rd.init()
rd.barrier()
count = mib * (1 << 20) // 4 // (g.size() if op == "all_gather" else 1)
base = status_mib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
x = np.full(count, g.rank() + 1, np.float32)
y = getattr(rd, op)(x)
peak = status_mib("VmHWM") - base
want = np.repeat(np.arange(1, g.size() + 1, dtype=np.float32), count) if op == "all_gather" else \
    np.full(count, g.size() * (g.size() + 1) / 2, np.float32)
assert np.array_equal(y, want)
print(f"shm={g.shm is not None} in={x.nbytes / (1 << 20):.1f} out={y.nbytes / (1 << 20):.1f} peak={peak:.1f}",
      flush=True)
