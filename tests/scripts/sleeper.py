"""Starts a child `sleep`, prints "pid <own pid> <child pid>", then sleeps SECONDS.

usage: sleeper.py SECONDS [--ignore-term]
With --ignore-term the rank ignores SIGTERM and SIGINT (the launcher's stops: a Ctrl-C passed
on, then SIGTERM), so only SIGKILL stops it.
"""

import os
import signal
import subprocess
import sys
import time

seconds = float(sys.argv[1])
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
print(f"pid {os.getpid()} {child.pid}", flush=True)
time.sleep(seconds)
