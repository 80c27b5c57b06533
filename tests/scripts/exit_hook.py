"""A user's exit hook registered after `import ringdist`, before init(), uses the world group:
ringdist's own exit hook is registered as the package is imported, so it runs after (the API
itself loads on first use)."""
import atexit

import numpy as np

import ringdist as rd

atexit.register(lambda: print("exit hook:", rd.all_sum(np.ones(1)).tolist(), flush=True))
g = rd.init()
print("init", g.size(), flush=True)
