"""The job's guard: kills what a killed launcher leaves behind. Runs as `python -I guard.py`.

The launcher starts it first, in its own session (so nothing aimed at the launcher's
process group or terminal reaches it), and writes to its stdin:
  +PGID        a local rank's process group and session (a remote rank's keeper does this on its host)
  =PATH        a directory of the job's (its local sockets) to remove once those are killed
  done         the job is over and cleaned up: exit, killing nothing
  end of file  without `done`: the launcher died (kill -9, a crash): SIGKILL every listed group
On Linux the kernel kills each rank when the launcher dies (PR_SET_PDEATHSIG), but not
what the rank started: its forked children, a shell's pipeline. They are in the rank's
process group, and the guard kills that; a rank leads its own session too (the group's
id is the session's), and on Linux the guard also kills the rest of that session: a
process the rank started in a process group of its own. A process that started its own
session has left the job and is left alone. Standard library only, and nothing else to
import (`spawn` imports `kill_sessions` and `signal_sessions` from here).
"""

import os
import shutil
import signal
import sys

# The most passes `kill_session` makes over the processes, to catch those forked while it kills.
KILL_PASSES = 100


def signal_sessions(sids, sig, skip=(), skip_groups=()):
    """Linux: send `sig` to every live process of the sessions `sids` whose pid is not in `skip`
    and whose process group is not in `skip_groups`, in one pass over /proc; return the pids
    signalled (elsewhere, or without /proc: none)."""
    if not sids or not sys.platform.startswith("linux"):
        return set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return set()
    wanted = {str(sid).encode() for sid in sids}
    groups = {str(pgid).encode() for pgid in skip_groups}
    signalled = set()
    for name in names:
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # after the command name's last ")": state, ppid, process group, session, ...
                fields = f.read().rpartition(b")")[2].split()
        except OSError:  # gone already
            continue
        if len(fields) > 3 and fields[3] in wanted and fields[0] not in (b"Z", b"X") and fields[2] not in groups:
            try:
                os.kill(int(name), sig)
            except OSError:
                continue
            signalled.add(int(name))
    return signalled


def kill_sessions(sids):
    """Linux: SIGKILL every process of the sessions `sids`, again while new ones appear (a process
    forking as it is killed). The caller keeps each id from being reused meanwhile: its leader is
    alive or an unreaped zombie, or, as here in the guard, its leader died a moment ago."""
    killed = set()
    for _ in range(KILL_PASSES):
        more = signal_sessions(sids, signal.SIGKILL, killed)
        if not more:
            return
        killed |= more


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
    kill_sessions(set(groups))  # a rank's process group id is its session's
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
