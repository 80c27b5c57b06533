"""Starts two children and prints "children <regrouped pid> <own-session pid>", then sleeps SECONDS
and exits 0. The first child moved to a process group of its own but stayed in the rank's session
(it is still the job's); the second started a session of its own (it has left the job).

usage: regrouped_child.py SECONDS
"""

import os
import subprocess
import sys
import time

seconds = float(sys.argv[1])
regrouped = subprocess.Popen(["sleep", "371"], preexec_fn=lambda: os.setpgid(0, 0))  # (process_group=0: 3.11+)
left = subprocess.Popen(["sleep", "372"], start_new_session=True)
print(f"children {regrouped.pid} {left.pid}", flush=True)
time.sleep(seconds)
