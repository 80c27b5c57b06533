"""Prints LINES numbered lines to stdout and to stderr as fast as it can.

usage: chatter.py LINES WIDTH
Each line is "r=<rank> i=<n> " followed by WIDTH copies of the rank's letter.
"""

import os
import sys

lines, width = int(sys.argv[1]), int(sys.argv[2])
rank = int(os.environ["RINGDIST_RANK"])
payload = "abcdefghij"[rank % 10] * width
for i in range(lines):
    sys.stdout.write(f"r={rank} i={i} {payload}\n")
    sys.stderr.write(f"r={rank} i={i} {payload}\n")
