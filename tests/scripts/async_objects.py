"""Object messages queued behind non-blocking operations (2 ranks).

argv[1]:
- two_groups: on rank 0, thread T1 owns the world and thread T2 a split, each with a
  non-blocking barrier outstanding, so their blocking object messages queue on the progress
  thread. T1 waits for an object rank 1 sends only after it has received T2's: T2's message
  must not wait behind T1's.
- one_group: the same with both threads on the world (messages from several threads).
- failures: queued object messages that fail: an object that cannot be pickled (both ends
  raise ValueError, the pair stays in step), then a recv_object nobody sends to, on a group
  whose pair has no connection yet (its timeout names recv_object).
- nonblocking (any number of ranks): send_object/recv_object with async_op=True to and from
  every other rank, waited in reverse; an object changed after its isend returned arrives as it
  was; a handle waited from two threads gives both the same object; an object that cannot be
  pickled, and one that cannot be unpickled, raise at the wait on both ends, the pairs in step.
Each rank prints what it got; a message held up waits out RINGDIST_TIMEOUT and fails.
"""

import sys
import threading

import numpy as np

import ringdist as rd

class _Refused:
    """Pickles; its unpickling raises."""

    def __reduce__(self):
        return (_refuse, ("not here",))


def _refuse(why):
    raise ValueError(why)


world = rd.init()
r = world.rank()
mode = sys.argv[1]
done = threading.Event()


def say(text):
    print(f"{text} rank={r}", flush=True)


if mode in ("two_groups", "one_group"):
    other = world.split(0) if mode == "two_groups" else world
    if r == 0:
        def t1():
            pending = rd.barrier(group=world, async_op=True)  # outstanding until rank 1 enters it
            say(f"T1 got {rd.recv_object(1, group=world)}")
            pending.wait()

        def t2():
            done.wait(0.3)  # T1's recv_object is queued first
            pending = rd.barrier(group=other, async_op=True) if other is not world else None
            rd.send_object("from T2", 1, group=other)
            say("T2 sent")
            if pending is not None:
                pending.wait()

        threads = [threading.Thread(target=t1, name="T1"), threading.Thread(target=t2, name="T2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        if other is not world:
            rd.barrier(group=other)
        say(f"got {rd.recv_object(0, group=other)}")
        rd.send_object("from rank 1", 0, group=world)
        rd.barrier(group=world)
    if other is not world:
        other.close()
    say("done")
elif mode == "failures":
    pending = rd.barrier(async_op=True)
    if r == 0:
        try:
            rd.send_object(threading.Lock(), 1)
        except ValueError as exc:
            say(f"send raised {exc}")
        rd.send_object("next", 1)
    else:
        try:
            rd.recv_object(0)
        except ValueError as exc:
            say(f"recv raised {exc}")
        say(f"then got {rd.recv_object(0)}")
    pending.wait()
    fresh = world.split(0)  # no message between the pair yet: its connection never comes
    pending = rd.barrier(group=fresh, async_op=True)
    if r == 1:
        try:
            rd.recv_object(0, group=fresh, timeout=0.5)
        except rd.RingTimeoutError as exc:
            say(f"timed out {exc}")
    pending.wait()
    rd.barrier()
    say("done")
elif mode == "nonblocking":
    n = world.size()
    others = [p for p in range(n) if p != r]
    payload = {"from": r, "array": np.arange(5) + r}
    sends = [rd.send_object(payload, p, async_op=True) for p in others]
    payload["from"] = -1  # after the call: the message has the object as it was
    recvs = {p: rd.recv_object(p, async_op=True) for p in others}
    for p in reversed(others):
        got = recvs[p].wait()
        assert got["from"] == p and np.array_equal(got["array"], np.arange(5) + p), (p, got)
    assert all(w.wait() is None for w in sends)
    say("ring ok")
    if n >= 2:
        peer = 1 - r if r < 2 else None
        if peer is not None:
            if r == 0:
                rd.send_object(["shared"], peer, async_op=True).wait()
            else:
                handle = rd.recv_object(peer, async_op=True)
                seen = []
                waiters = [threading.Thread(target=lambda: seen.append(handle.wait())) for _ in range(2)]
                for t in waiters:
                    t.start()
                for t in waiters:
                    t.join()
                assert seen == [["shared"], ["shared"]] and seen[0] is seen[1], seen
                say("two waiters ok")
            if r == 0:
                bad = rd.send_object(threading.Lock(), peer, async_op=True)
                refused = rd.send_object(_Refused(), peer, async_op=True)
                fine = rd.send_object("after", peer, async_op=True)
                for name, w in (("unpicklable", bad), ("refused", refused), ("after", fine)):
                    try:
                        say(f"{name} sent {w.wait()}")
                    except ValueError as exc:
                        say(f"{name} send raised {exc}")
            else:
                handles = [rd.recv_object(peer, async_op=True) for _ in range(3)]
                for name, w in zip(("unpicklable", "refused", "after"), handles):
                    try:
                        say(f"{name} got {w.wait()}")
                    except ValueError as exc:
                        say(f"{name} recv raised {exc} (cause {exc.__cause__!r})")
    rd.barrier()
    say("done")
