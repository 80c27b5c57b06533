"""scan on float32 arrays of 1.5 M elements (several shared-memory rounds, a chunked chain),
inclusive and exclusive, against numpy's fold in rank order, bit for bit; prints `ok`."""
import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()
xs = [np.random.default_rng(q).random(1_500_000, dtype=np.float32) for q in range(n)]
for exclusive in (False, True):
    got = rd.scan(xs[r], exclusive=exclusive)
    k = r if exclusive else r + 1
    if k == 0:
        assert got is None
        continue
    want = xs[0].copy()
    for q in range(1, k):
        want += xs[q]
    assert got.tobytes() == want.tobytes(), (r, exclusive)
print("ok", flush=True)
