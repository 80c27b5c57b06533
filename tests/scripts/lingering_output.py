"""A rank that ends at once, leaving a child that holds its stdout open for SECONDS (in a session
of its own: it has left the job, so the launcher waits for the rank's output to end, up to its
drain limit, and kills nothing).

usage: lingering_output.py SECONDS
Prints "child <its pid> rank <the rank's pid>".
"""
import os
import subprocess
import sys

child = subprocess.Popen(["sleep", sys.argv[1]], start_new_session=True)
print(f"child {child.pid} rank {os.getpid()}", flush=True)
