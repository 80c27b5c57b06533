"""Open MPI through mpi4py as a peer (labels mpi_tcp, mpi_shm): one rank of loop.py's measurement.

Started on every rank by `mpirun -n N [--mca btl ...] PY mpi_worker.py --peer-name LABEL [loop options]`;
run.py picks the transport with `--mca btl` (self,tcp over lo, or self,vader: shared memory) and
says which in PEER_TRANSPORT. Allgather, Allreduce(SUM), Alltoall, Gather, Scatter and Reduce(SUM)
(root 0) write into outputs made once per row.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop  # noqa: E402

import numpy as np  # noqa: E402
import mpi4py  # noqa: E402
from mpi4py import MPI  # noqa: E402


class OpenMPI(loop.Adapter):
    peer = "mpi"
    launcher = "mpirun"

    def __init__(self):
        self.transport = os.environ.get("PEER_TRANSPORT", "default")
        library = MPI.Get_library_version().split(",")[0].strip()
        self.version = f"mpi4py {mpi4py.__version__}; {library}"
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def barrier(self):
        self.comm.Barrier()

    def prepare(self, x, collective):
        count = {"all_gather": x.size * self.size, "gather": x.size * self.size, "scatter": x.size // self.size}
        out = np.empty(count.get(collective, x.size), dtype=np.float32)
        return x, out

    def all_gather(self, state):
        x, out = state
        self.comm.Allgather([x, MPI.FLOAT], [out, MPI.FLOAT])
        return out

    def all_sum(self, state):
        x, out = state
        self.comm.Allreduce([x, MPI.FLOAT], [out, MPI.FLOAT], op=MPI.SUM)
        return out

    def all_to_all(self, state):
        x, out = state
        self.comm.Alltoall([x, MPI.FLOAT], [out, MPI.FLOAT])
        return out

    def gather(self, state):
        x, out = state
        self.comm.Gather([x, MPI.FLOAT], [out, MPI.FLOAT] if self.rank == 0 else None, root=0)
        return out if self.rank == 0 else None

    def scatter(self, state):
        x, out = state
        self.comm.Scatter([x, MPI.FLOAT] if self.rank == 0 else None, [out, MPI.FLOAT], root=0)
        return out

    def reduce(self, state):
        x, out = state
        self.comm.Reduce([x, MPI.FLOAT], [out, MPI.FLOAT] if self.rank == 0 else None, op=MPI.SUM, root=0)
        return out if self.rank == 0 else None


if __name__ == "__main__":
    loop.main(OpenMPI)
