"""The main job: every rank contributes a block; all_gather hands every rank all blocks.

    ringdist-launch --hosts hostfiles/localhost-4.json examples/gather.py
"""
import numpy as np

import ringdist as rd

group = rd.init()
rank, size = group.rank(), group.size()

x = np.arange(4, dtype=np.float32) + 10 * rank  # rank r holds [10r, 10r+1, 10r+2, 10r+3]
y = rd.all_gather(x)  # every rank: all blocks, in rank order

expected = np.concatenate([np.arange(4, dtype=np.float32) + 10 * r for r in range(size)])
assert np.array_equal(y, expected), (y, expected)
print(f"rank {rank} of {size}: all_gather -> {y.tolist()}")
