"""The job's guard: kills what a killed launcher leaves behind. Runs as `python -c <this file>`.

The launcher starts it first, in its own session (so nothing aimed at the launcher's
process group or terminal reaches it), and writes to its stdin:
  +PGID        a local rank's process group (a remote rank's keeper does this job on its host)
  =PATH        a directory of the job's (its local sockets) to remove once those are killed
  done         the job is over and cleaned up: exit, killing nothing
  end of file  without `done`: the launcher died (kill -9, a crash): SIGKILL every listed group
On Linux the kernel kills each rank when the launcher dies (PR_SET_PDEATHSIG), but not
what the rank started: its forked children, a shell's pipeline. They are in the rank's
process group, and the guard kills that. A process that started its own session has
left the job and is left alone. Standard library only, and nothing else to import.
"""

import os
import shutil
import signal
import sys


def main():
    groups = []
    paths = []
    pending = b""
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            word = line.strip()
            if word == b"done":
                return 0
            if word[:1] == b"+" and word[1:].isdigit():
                groups.append(int(word[1:]))
            elif word[:1] == b"=" and len(word) > 1:
                paths.append(os.fsdecode(word[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # the group is gone already
            pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
