"""Ranks with different RINGDIST_MAX_OBJECT_BYTES (rank 0: 100,000; the others 1,000,000), and an
object of 100,009 pickled bytes sent to rank 0 by every kind of object call, in the world and in
a group split from it. Prints `<call> ok` or `<call> <error type>: <message>` for each."""
import os

os.environ["RINGDIST_MAX_OBJECT_BYTES"] = "100000" if os.environ["RINGDIST_RANK"] == "0" else "1000000"

import numpy as np  # noqa: E402
import ringdist as rd  # noqa: E402  (after its setting, which it reads once)
from attempts import attempt  # noqa: E402

g = rd.init()
r = g.rank()
big = b"x" * 100_000


for group, where in ((g, "world"), (g.split(0, key=r), "split")):
    attempt(f"{where} broadcast_object", lambda: rd.broadcast_object(big if r == 1 else None, root=1, group=group))
    attempt(f"{where} all_gather_object", lambda: rd.all_gather_object(big if r == 2 else r, group=group))
    attempt(f"{where} gather_object", lambda: rd.gather_object(big if r == 1 else None, root=0, group=group))
    if r == 1:  # a tag the receive does not ask for first, then one it does (to a numpy rank in the split)
        attempt(f"{where} send_object", lambda: rd.send_object(big, 0 if where == "world" else np.int64(0), tag=5,
                                                               group=group))
        attempt(f"{where} send_object small", lambda: rd.send_object("small", 0, tag=6, group=group))
    if r == 0:
        attempt(f"{where} recv_object small", lambda: rd.recv_object(1, tag=6, group=group))
        attempt(f"{where} recv_object", lambda: rd.recv_object(1, tag=5, group=group))
    attempt(f"{where} after", lambda: rd.barrier(group=group))
