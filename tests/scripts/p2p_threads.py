"""Threads of one rank sending to (or receiving from) the same peer at once.

usage: p2p_threads.py send|recv|mixed|objects|wait|queued_send|queued_recv K SIZE
- send: rank 0's threads A and B each send K arrays to rank 1, which receives 2K;
- recv: rank 0 sends 2K arrays; rank 1's threads A and B each receive K;
- mixed: rank 0's thread A sends K arrays blocking while its main thread sends K with async_op;
- objects: as send, with send_object/recv_object;
- wait: rank 0's thread A sends SIZE float64s that rank 1 takes only after 3 s, and meanwhile
  its thread B sends with a timeout of 0.5 s (K is ignored);
- queued_send: rank 0 sends 64 MiB with async_op, then an object to the same peer; queued_recv:
  rank 0 posts an async recv, then receives an object from the same peer (K, SIZE ignored).
Every array is filled with one value, sender * 1e6 + index, so a message cut into another
shows as an array of two values. Rank 1 prints "intact N from A: i..j" per sender and
"torn N"; each thread that failed prints "<who> raised <Error>: <message>".
"""
import sys
import threading
import time

import numpy as np

import ringdist as rd

mode, K, SIZE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = rd.init()
r = g.rank()


def guarded(who, fn):
    def run():
        try:
            fn()
        except rd.RingError as exc:
            print(f"{who} raised {type(exc).__name__}: {exc}", flush=True)
    return run


def arr(sender, i):
    return np.full(SIZE, sender * 1e6 + i, np.float64)


def sends(sender, asynchronous=False, objects=False):
    handles = []
    for i in range(K):
        if objects:
            rd.send_object({"v": arr(sender, i)}, 1, timeout=30)
        elif asynchronous:
            handles.append(rd.send(arr(sender, i), 1, timeout=30, async_op=True))
        else:
            rd.send(arr(sender, i), 1, timeout=30)
    for h in handles:
        h.wait()


def both(first, second):
    threads = [threading.Thread(target=guarded("A", first)), threading.Thread(target=guarded("B", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


got = []
if mode == "queued_send":
    if r == 0:
        handle = rd.send(np.ones(8 << 20), 1, async_op=True, timeout=20)
        guarded("main", lambda: rd.send_object({"x": 1}, 1, timeout=20))()
        guarded("main", handle.wait)()
    else:
        time.sleep(0.5)
        whole = rd.recv((8 << 20,), np.float64, 0, timeout=20)
        print(f"got {whole.sum()} {rd.recv_object(0, timeout=20)}", flush=True)
    sys.exit(0)
if mode == "queued_recv":
    if r == 0:
        handle = rd.recv((4,), np.float64, 1, async_op=True, timeout=20)
        thing = rd.recv_object(1, timeout=20)
        print(f"got {handle.wait()} {thing}", flush=True)
    else:
        time.sleep(0.5)
        rd.send(np.arange(4.0), 0, timeout=20)
        rd.send_object("hello", 0, timeout=20)
    sys.exit(0)
if mode == "wait":
    if r == 0:
        both(lambda: rd.send(arr(1, 0), 1, timeout=30),
             lambda: (time.sleep(1.0), rd.send(arr(2, 0), 1, timeout=0.5)))  # A has its turn by then
    else:
        time.sleep(3)
        got.append(rd.recv((SIZE,), np.float64, 0, timeout=30))
        print(f"received from {int(got[0][0] // 1e6)}", flush=True)
    sys.exit(0)
if r == 0:
    if mode == "send":
        both(lambda: sends(1), lambda: sends(2))
    elif mode == "objects":
        both(lambda: sends(1, objects=True), lambda: sends(2, objects=True))
    elif mode == "mixed":
        t = threading.Thread(target=guarded("A", lambda: sends(1)))
        t.start()
        guarded("main", lambda: sends(2, asynchronous=True))()
        t.join()
    else:
        for i in range(2 * K):
            rd.send(arr(1 + i % 2, i // 2), 1, timeout=30)
elif r == 1:
    def receive(count):
        for _ in range(count):
            if mode == "objects":
                got.append(rd.recv_object(0, timeout=30)["v"])
            else:
                got.append(rd.recv((SIZE,), np.float64, 0, timeout=30))
    if mode == "recv":
        both(lambda: receive(K), lambda: receive(K))
    else:
        guarded("main", lambda: receive(2 * K))()
    torn = sum(1 for a in got if not np.all(a == a[0]))
    by_sender = {}
    for a in got:
        if np.all(a == a[0]):
            by_sender.setdefault(int(a[0] // 1e6), []).append(int(a[0] % 1e6))
    for sender, idx in sorted(by_sender.items()):
        # a thread's own messages in its order (recv mode: the receiving threads interleave them)
        in_order = idx == sorted(idx)
        print(f"intact {len(idx)} from {sender}: {'in order' if in_order else 'out of order'} "
              f"{sorted(idx) == list(range(K))}", flush=True)
    print(f"torn {torn}", flush=True)
