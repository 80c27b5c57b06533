"""Cross-memory reads on one machine: large blocks copied straight out of their owner's memory.

Where every rank of a group can read its peers' memory (`ringdist.crossmem`; the link's
`pids`, voted on when the group was made), a rank says where its block lies (a word of its
control page, `shmsignal`), signals, and each reader copies the block out of the owner's
memory with one kernel copy (`process_vm_readv`), into its output. A second signal says
every reader is done: the owner may return, and its caller change the buffer.

- all-gather: each rank's block, copied into its own output first, is read from there by
  every peer. Per rank m + (N-1)m copied, against one copy more through the segments (its
  block into its segment). Used on 2 ranks only: with more, the segments' copy is made
  once and read by N-1 peers while it is in the cache, and they won on 3-8 ranks (2-core VM).
- all-to-all of equal blocks: each rank reads its block where it lies in every peer's
  input: (N-1)m copied instead of 2(N-1)m.

Other kinds (uneven all-to-all) go through the segments, as `shm` does.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .. import crossmem, wire
from ..arrays import byte_view
from ..comm import Comm
from ..errors import PeerLostError, RingError
from . import shm
from .base import Algorithm
from .shm_blocks import signal


def _read(g: Comm, p: int, into: memoryview, remote: int, op: str) -> None:
    """Rank p's bytes at `remote` in its memory into `into`; a refusal fails the call on every rank."""
    link = g.shm
    assert link is not None and link.pids is not None
    code = crossmem.read(link.pids[p], into, remote)
    if code:
        what = (f"rank {g.rank()}: {op} on group {g.gid!r}: reading rank {p}'s block from its memory "
                f"(process {link.pids[p]}) failed: {os.strerror(code)}")
        err = PeerLostError(what + " (the process is gone)") if code == errno.ESRCH else RingError(what)
        g._fail(op, g.channels, g._seq - 1, [], err)
        raise err


def _publish(g: Comm, address: int, op: str, header: wire.Header, timeout: float | None) -> None:
    """Say where this rank's block lies and give the signal after which its peers read it."""
    g._signals.publish(address)  # type: ignore[union-attr]
    signal(g, op, header, timeout)


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    r = g.rank()
    rows = arr.shape[0]
    np.copyto(out[r * rows:(r + 1) * rows], arr)  # a strided input is gathered into place here
    dst = byte_view(out)
    m = arr.nbytes
    op = header.fields["op"]
    _publish(g, crossmem.address(dst[r * m:(r + 1) * m]), op, header, timeout)
    for p in g.shm.others:  # type: ignore[union-attr]
        _read(g, p, dst[p * m:(p + 1) * m], g._signals.published(p), op)  # type: ignore[union-attr]
    signal(g, op, header, timeout)  # every peer has its copy: the output may change


def all_to_all_even(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    n, r = g.size(), g.rank()
    m = len(data) // n
    lo = r * m
    op = header.fields["op"]
    out[lo:lo + m] = data[lo:lo + m]
    _publish(g, crossmem.address(data), op, header, timeout)
    for p in g.shm.others:  # type: ignore[union-attr]
        _read(g, p, out[p * m:(p + 1) * m], g._signals.published(p) + lo, op)  # type: ignore[union-attr]
    signal(g, op, header, timeout)  # every rank has its blocks: the inputs may change


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    why = shm.ALGORITHM.fits(comm, kind, nbytes)
    if why is not None:
        return why
    if comm.shm is None or comm.shm.pids is None:
        return ("it needs every rank to read its peers' memory (Linux's process_vm_readv between processes "
                "of one user, signals through shared memory, RINGDIST_SHM_CMA not 0)")
    return None


ALGORITHM = Algorithm("shm-cma", gather=gather, all_to_all=shm.all_to_all, all_to_all_even=all_to_all_even,
                      barrier=shm.barrier, fits=_fits)
