"""Peak resident memory of an all_gather: input + output and little more, call after call.

usage: memory_peak.py MIB_PER_RANK   (prints one line per call on every rank)
The cached result block is reused once the previous result is dropped (ringdist.buffers).
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


g = rd.init()
rd.barrier()
mib = int(sys.argv[1])
base = status_mib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
x = np.ones(mib * (1 << 20) // 4, np.float32)
x[:] = g.rank()
for call in range(3):
    y = rd.all_gather(x)
    assert y.shape == (g.size() * x.size,) and all(y[r * x.size] == r for r in range(g.size()))
    del y
    print(f"call {call}: peak {status_mib('VmHWM') - base:.1f} MiB over baseline", flush=True)
