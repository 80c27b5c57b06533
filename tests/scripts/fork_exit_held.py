"""A child forked while another thread of its rank held the group's lock on messages read ahead
of their receive (`tags.Held`: a receive keeping a message of another tag holds it for a
moment): the child's exit, where ringdist's exit hook closes its copies of the groups, must not
wait for a lock no thread of the child will release."""

import os
import sys
import threading
import time

import ringdist as rd

g = rd.init()
held, release = threading.Event(), threading.Event()


def holder() -> None:
    with g.held._lock:  # as a receive that keeps a message of another tag does, for a moment
        held.set()
        release.wait(10)


t = threading.Thread(target=holder)
t.start()
held.wait(5)
pid = os.fork()
if pid == 0:
    sys.exit(3)  # the interpreter's exit: the exit hooks run
release.set()
t.join()
deadline = time.monotonic() + 10
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(f"child exited with {os.waitstatus_to_exitcode(status)}", flush=True)
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung at exit", flush=True)
        break
    time.sleep(0.05)
rd.barrier()
