"""ringdist as a peer (label ringdist_ring): one rank of the measurement in loop.py.

Started on every rank by `ringdist-launch -n N ringdist_worker.py [loop options]`.
ringdist returns a new array from every call; the input is passed as it is.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop  # noqa: E402

import ringdist  # noqa: E402


class Ringdist(loop.Adapter):
    peer = "ringdist_ring"
    launcher = "ringdist-launch"
    transport = "tcp"

    def __init__(self):
        self.version = f"ringdist {ringdist.__version__}"
        self.group = ringdist.init()
        self.rank, self.size = self.group.rank(), self.group.size()
        # Groups of 2 to 8 on one machine also have shared memory (RINGDIST_SHM=0: TCP only).
        self.transport = "tcp+shm" if getattr(self.group, "shm", None) is not None else "tcp"

    def barrier(self):
        ringdist.barrier(group=self.group)

    def all_gather(self, x):
        return ringdist.all_gather(x, group=self.group)

    def all_sum(self, x):
        return ringdist.all_sum(x, group=self.group)

    def all_to_all(self, x):
        return ringdist.all_to_all(x, group=self.group)

    def gather(self, x):
        return ringdist.gather(x, root=0, group=self.group)

    def scatter(self, x):
        return ringdist.scatter(x if self.rank == 0 else None, root=0, group=self.group)

    def reduce(self, x):
        return ringdist.reduce(x, root=0, group=self.group)


if __name__ == "__main__":
    loop.main(Ringdist)
