"""Open MPI through mpi4py as a peer (labels mpi_tcp, mpi_shm): one rank of loop.py's measurement.

Started on every rank by `mpirun -n N [--mca btl ...] PY mpi_worker.py --peer-name LABEL [loop options]`;
run.py picks the transport with `--mca btl` (self,tcp over lo, or self,vader: shared memory) and
says which in PEER_TRANSPORT. Allgather, Allreduce(SUM) and Alltoall write into outputs made once per row.
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
        out = np.empty(x.size * self.size if collective == "all_gather" else x.size, dtype=np.float32)
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


if __name__ == "__main__":
    loop.main(OpenMPI)
