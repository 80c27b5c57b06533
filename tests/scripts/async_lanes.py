"""Non-blocking work that stresses the progress thread's point-to-point lanes.

preposted N: rank 1 posts N small irecvs from rank 0 before any byte arrives (MPI-style
    pre-posted receives), rank 0 then sends them all at once: every message after the first
    is read ahead with it, so each head of the lane completes as it opens.
beside: async collectives and a ring shift on the world while the main thread runs blocking
    collectives on a second group of the same ranks.
wait_args: Work.wait refuses a bad timeout whether the operation has finished or not.
told: rank 0's irecv times out while its group's all_gather_object, past its last wait, still
    works on the runner (3 s more, added after its last step): the peers must hear of the broken
    group at once, not at their timeout.
refused: rank 1's irecv times out while its group's async all_gather_object has not reached the
    group yet (its object takes 2 s to pickle), so the call is refused there, the group broken:
    the peers, in the call, must hear of it at once, not at their timeout.
groups: 50 sub-groups, one async all_sum each, closed at once: each closed group's runner ends.
no_runner: the first runner cannot start (no file descriptor for its pipe): the call raises and
    nothing is left pending; the next call works, and exit is prompt.
thread_fails: rank 0's progress thread fails (a defect, injected) as it starts a send: its
    handle raises, and rank 1, in a collective of the group, hears of it at once.
cross: async collectives on two groups issued in opposite orders on ranks 0 and 1, then two
    threads each issuing 20 async all_gathers on a group of its own, started in opposite
    orders: each group's runner keeps its own order.
"""

import sys
import threading
import time

import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()
mode = sys.argv[1]

if mode == "preposted":
    count = int(sys.argv[2])
    if r == 1:
        works = [rd.recv((2,), np.int64, 0, async_op=True) for _ in range(count)]
        time.sleep(0.5)  # every recv is in the lane before a byte arrives
        rd.barrier()
        got = [w.wait(timeout=60) for w in works]
        assert [int(a[0]) for a in got] == list(range(count)), "messages lost or out of order"
    elif r == 0:
        rd.barrier()
        for i in range(count):
            rd.send(np.full(2, i), 1)  # each fits the socket buffer: the sends return at once
    else:
        rd.barrier()
    print("preposted ok", flush=True)

if mode == "beside":
    sub = g.split(0)
    right, left = (r + 1) % n, (r - 1) % n
    for it in range(30):
        x = np.full((10, 70000, 300000)[it % 3], it + r, dtype=np.float64)
        total = rd.all_sum(x, async_op=True)
        sent = rd.send(x, right, async_op=True)
        came = rd.recv_like(x, left, async_op=True)
        rows = rd.all_gather(x[:1000], async_op=True)
        y = rd.all_sum(x * 2, group=sub)  # blocking, on the other group, on this thread
        z = rd.all_max(x, group=sub)
        want = sum(it + q for q in range(n))
        assert (y == 2 * want).all() and (z == it + n - 1).all()
        assert (total.wait(timeout=60) == want).all()
        assert (came.wait(timeout=60) == it + left).all()
        sent.wait(timeout=60)
        assert rows.wait(timeout=60).reshape(n, -1)[:, 0].tolist() == [it + q for q in range(n)]
    print("beside ok", flush=True)

if mode == "wait_args":
    for finished in (False, True):
        w = rd.all_sum(np.ones(2), async_op=True)
        if finished:
            w.wait()
        for bad in (-1, float("nan"), "1"):
            try:
                w.wait(timeout=bad)
            except (TypeError, ValueError) as exc:
                print(f"finished={finished} timeout={bad!r}: {type(exc).__name__}", flush=True)
            else:
                print(f"finished={finished} timeout={bad!r}: accepted", flush=True)
        w.wait()

if mode == "cross":
    sub = g.split(0)
    first, second = (sub, g) if r % 2 == 0 else (g, sub)
    scale = {id(g): 1.0, id(sub): 10.0}  # each group's sum tells which group it came from
    a = rd.all_sum(np.full(3, scale[id(first)] * r), group=first, async_op=True)
    b = rd.all_sum(np.full(3, scale[id(second)] * r), group=second, async_op=True)
    want = sum(range(n))
    assert a.wait(timeout=60).tolist() == [scale[id(first)] * want] * 3
    assert b.wait(timeout=60).tolist() == [scale[id(second)] * want] * 3
    groups = [g.split(0), g.split(0)]
    got: dict[int, list] = {}

    def issue(i: int) -> None:
        works = [rd.all_gather(np.array([r * 100 + i * 10 + k]), group=groups[i], async_op=True) for k in range(20)]
        got[i] = [w.wait(timeout=60).tolist() for w in works]

    threads = [threading.Thread(target=issue, args=(i,)) for i in ((0, 1) if r % 2 == 0 else (1, 0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i][k] == [q * 100 + i * 10 + k for q in range(n)] for i in (0, 1) for k in range(20)), got
    print("cross ok", flush=True)


if mode == "told":
    rd.send(np.ones(1), (r + 1) % n)  # rank n-1's connection to rank 0 is open: the recv below fails on it
    rd.recv((1,), np.float64, (r - 1) % n)
    rd.barrier()
    t0 = time.monotonic()
    if r == 0:
        import ringdist.objects

        agree = ringdist.objects._agree  # an object collective's last step

        def agree_then_linger(*args, **kwargs):
            agree(*args, **kwargs)
            time.sleep(3)  # past the call's last wait, on the runner

        ringdist.objects._agree = agree_then_linger
        gathered = rd.all_gather_object(0, async_op=True)
        lost = rd.recv((1,), np.float64, n - 1, async_op=True)  # what comes does not fit
        gathered.wait(timeout=30)
        try:
            lost.wait(timeout=30)
        except rd.MismatchError:
            pass
    else:
        rd.all_gather_object(r, timeout=10)
        if r == n - 1:  # while rank 0's call lingers past its last wait
            time.sleep(1)
            rd.send(np.zeros(2, np.int32), 0)
    try:
        rd.all_sum(np.ones(3), timeout=20)
        print("all_sum returned", flush=True)
    except rd.RingError as exc:
        print(f"all_sum raised {type(exc).__name__} after {time.monotonic() - t0:.1f}s: {exc}", flush=True)
    time.sleep(1 if r == 0 else 0)  # rank 0 stays: its peers hear its ABORT, not its exit

class SlowToPickle:
    def __reduce__(self):
        time.sleep(2.0)
        return (int, (7,))


if mode == "refused":
    if r == 0:
        rd.send(np.zeros(1), 1)  # the pair's connection is open: the recv below fails on it
    elif r == 1:
        rd.recv(1, np.float64, 0)
    rd.barrier()
    t0 = time.monotonic()
    if r == 0:
        time.sleep(0.5)
        rd.send(np.zeros(2, np.int32), 1)  # while rank 1 pickles: what comes does not fit its recv
    if r == 1:
        lost = rd.recv(1, np.float64, 0, async_op=True)
        gathered = rd.all_gather_object(SlowToPickle(), async_op=True)
        for name, work in (("recv", lost), ("all_gather_object", gathered)):
            try:
                work.wait(timeout=30)
                print(f"{name} returned", flush=True)
            except rd.RingError as exc:
                print(f"{name} raised {type(exc).__name__}", flush=True)
        time.sleep(3)  # stays: its peers hear its ABORT, not its exit
    else:
        try:
            rd.all_gather_object(r, timeout=20)
            print("all_gather_object returned", flush=True)
        except rd.RingError as exc:
            print(f"all_gather_object raised {type(exc).__name__} after {time.monotonic() - t0:.1f}s: {exc}",
                  flush=True)

if mode == "groups":
    peak = 0
    for _ in range(50):
        sub = g.split(0)
        rd.all_sum(np.ones(2), group=sub, async_op=True).wait(timeout=30)
        sub.close()
        peak = max(peak, sum(t.name.startswith("ringdist-runner") for t in threading.enumerate()))
    print(f"runner threads at most {peak}", flush=True)

if mode == "no_runner":
    import errno

    from ringdist import jobs, runners

    Real = runners.Runner

    class NoFiles(Real):
        def __init__(self, g):
            runners.Runner = Real  # once
            raise OSError(errno.EMFILE, "Too many open files")  # as os.pipe() would
    runners.Runner = NoFiles
    try:
        rd.all_sum(np.ones(2), async_op=True)
    except OSError as exc:
        print(f"first call raised {exc.strerror}; pending: {len(jobs.pending)}", flush=True)
    print(f"second call: {rd.all_sum(np.ones(2), async_op=True).wait(timeout=30).tolist()}", flush=True)

if mode == "thread_fails":
    if r == 0:
        from ringdist import lanes

        def add(self, job):
            raise RuntimeError("injected")
        lanes.Lanes.add = add
        t0 = time.monotonic()
        try:
            rd.send(np.ones(4), 1, async_op=True).wait(timeout=30)
        except rd.RingError as exc:
            print(f"send raised {exc}", flush=True)
        time.sleep(6)  # stays: rank 1 hears the ABORT, not this rank's exit
    else:
        t0 = time.monotonic()
        try:
            rd.all_sum(np.ones(2), timeout=20)
        except rd.RingError as exc:
            print(f"all_sum raised after {time.monotonic() - t0:.1f}s: {exc}", flush=True)
