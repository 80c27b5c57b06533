"""A rank waiting (a sleep, or a collective its peer never joins) when the launcher gets Ctrl-C:
it gets KeyboardInterrupt, as a program run alone does, and its except and finally blocks and exit
handlers run, once (a second interrupt would cut them short)."""

import atexit
import sys
import time

import numpy as np

import ringdist as rd

g = rd.init()
atexit.register(lambda: print("exit handler ran", flush=True))
try:
    print("ready", flush=True)
    if g.rank() == 0 and "--in-collective" in sys.argv:
        rd.all_sum(np.ones(4))  # rank 1 sleeps: rank 0 waits in the call
    else:
        time.sleep(60)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
finally:
    print("finally ran", flush=True)
