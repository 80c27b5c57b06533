"""Prints "ready pid=<pid>" once its handlers for SIGUSR1 and SIGUSR2 are in place, then waits up
to SECONDS for one of them; prints "got <name>" for each that comes and exits 0, or 1 if none came.

usage: signal_waiter.py [SECONDS]
"""

import os
import signal
import sys
import threading

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
got = threading.Event()


def handler(signum, _frame):
    print(f"got {signal.Signals(signum).name}", flush=True)
    got.set()


signal.signal(signal.SIGUSR1, handler)
signal.signal(signal.SIGUSR2, handler)
print(f"ready pid={os.getpid()}", flush=True)
sys.exit(0 if got.wait(seconds) else 1)
