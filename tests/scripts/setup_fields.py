"""Rank 2 is killed (SIGKILL) as it makes a sub-group, after the split agreed on it; every other
rank prints what its error carries, as JSON. SIGTERM is ignored (the launcher's stop waits)."""
import json
import os
import signal
import sys

import ringdist as rd
from ringdist.endpoint import Endpoint

signal.signal(signal.SIGTERM, lambda *a: None)
g = rd.init()
if g.rank() == 2:
    note = Endpoint.note_group

    def dying(self, gid):
        if gid != "world":
            os.kill(os.getpid(), signal.SIGKILL)
        note(self, gid)

    Endpoint.note_group = dying
try:
    sub = g.split(0, key=g.size() - g.rank())  # sub-group ranks reversed: world rank 2 is rank 1 of 4
    print("no error", flush=True)
except rd.RingError as exc:
    fields = {name: getattr(exc, name) for name in ("rank", "group", "op", "peer", "address", "origin")}
    print("fields " + json.dumps({"error": type(exc).__name__, **fields}), flush=True)
    sys.exit(3)
