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
  input: (N-1)m copied instead of 2(N-1)m. The sizes are known, so no header need pass
  between every pair: groups of more than 8 ranks (no mesh) use it too, where the blocks
  would otherwise go round the ring.
- all-reduce (and rooted reduce): each rank says where its input and its slice of the
  result lie, signals, reduces slice r of every rank's input in rank order (read a piece at
  a time through a scratch buffer), signals, and reads every peer's reduced slice out of
  that peer's memory (the root alone, in a rooted reduce). Three signals a round of slices of
  up to 8 MiB (one round but for large arrays), whatever N, where the segments take two a
  round of a slot (12 MiB / 2N): 64 ranks reducing 1 MiB took 22 signals, each waiting for
  all 64 ranks.
- reduce-scatter: each rank says where its input lies, signals, sums block r of every rank's
  input in rank order into its output, and signals that it reads no input any more: two
  signals, where the segments take one a round of a slot's 1/N of each block. Blocks of any
  lengths (`reduce_scatter(counts=)`) likewise, but where one round of the segments holds
  every block (`shm.reduce_scatter_v`: one signal).
- broadcast: the root says where its array lies, signals, every other rank reads it, and a
  second signal frees it: one kernel copy per reader, where the segments take two copies
  and a signal a slot.

- scatter (chosen by the previous scatter's size, as every scatter is): the root writes its
  array's shape and dtype into its slot and says where the array lies; every other rank
  reads its block from the root's memory; two signals whatever the size.
- all-to-all of blocks of any sizes (splits), in groups of more than 8 ranks: the segments'
  first round carries every rank's layout (`shm_blocks`), including where each block lies in
  its owner's memory; where some stream is longer than 4 slots, each rank then copies what
  the first slots hold, reads the rest of its blocks from their owners' memory, and a second
  signal ends the call, instead of a signal a slot. With a mesh, and for scatter, the segments' rounds run as in `shm`.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .. import aborts, buffers, crossmem, schedule, shmsignal, wire
from ..arrays import REDUCERS, byte_view, fold_piece
from ..comm import Comm
from ..errors import MismatchError, PeerLostError, ProtocolError, RingError
from . import shm
from .base import Algorithm
from .blocks import Check, declared_empty
from .shm_blocks import failed, signal


def _read(g: Comm, p: int, into: memoryview, remote: int, op: str) -> None:
    """Rank p's bytes at `remote` in its memory into `into`; a refusal fails the call on every rank."""
    link = g.shm
    assert link is not None and link.pids is not None
    code = crossmem.read(link.pids[p], into, remote)
    if code:
        what = (f"rank {g.rank()}: {op} on group {g.gid!r}: reading rank {p}'s block from its memory "
                f"(process {link.pids[p]}) failed: {os.strerror(code)}")
        if code == errno.ESRCH:
            err: RingError = PeerLostError(what + " (the process is gone)")
        elif code == errno.EFAULT:  # the block is no longer mapped there: the process is leaving
            err = PeerLostError(what + " (its memory there is gone: the process is exiting)")
        else:
            err = RingError(what)
        try:
            aborts.pending_abort(g.channels, op)  # why the peer left, if it said so first
        except RingError as told:
            err = told
        if isinstance(err, PeerLostError) and getattr(err, "ringdist_origin", None) is None:
            err.ringdist_peer = (g.gid, p)  # type: ignore[attr-defined]
            g.why_lost(err)
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


# Bytes of a peer's part of a reduction read at a time (the scratch they pass through).
READ_PIECE = 1 << 20
# Bytes of a rank's slice of the result in one round of the all-reduce: off the root, a rooted
# reduce keeps its slice in scratch until the root has read it, and it runs the all-reduce's
# very rounds and pieces (the same bits: which NaN a fold keeps depends on where numpy's
# vector loop ends).
ROOTED_SLICE_MAX = 8 << 20


def _fold_from_inputs(g: Comm, ufunc: np.ufunc, own: np.ndarray, at: int, dst: np.ndarray, inputs: list[int],
                      name: str) -> None:
    """dst = element `at` onward of every rank's input (this rank's `own`, its peers' at the
    addresses they published) folded in rank order, read a piece at a time: the bits of
    `arrays.fold`, whose first step reads two rows where this copies the first."""
    n, r = g.size(), g.rank()
    isz = own.dtype.itemsize
    count = dst.size
    if not count:
        return
    step = max(1, READ_PIECE // isz)
    scratch = buffers.cache.empty((min(step, count),), own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    for a in range(0, count, step):
        b = min(count, a + step)
        piece = dst[a:b]
        if b - a == 1:  # a piece of one element: folded as the whole rows' is (`fold_piece`), not in place
            rows = [own[at + a:at + b] if q == r else np.empty(1, own.dtype) for q in range(n)]
            for q in range(n):
                if q != r:
                    _read(g, q, byte_view(rows[q]), inputs[q] + (at + a) * isz, name)
            fold_piece(rows, ufunc, piece)
            continue
        if r == 0:
            np.copyto(piece, own[at + a:at + b])
        else:
            _read(g, 0, byte_view(piece), inputs[0] + (at + a) * isz, name)
        for q in range(1, n):
            if q == r:
                ufunc(piece, own[at + a:at + b], out=piece)
            else:
                part = scratch[:b - a]
                _read(g, q, byte_view(part), inputs[q] + (at + a) * isz, name)
                ufunc(piece, part, out=piece)


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None,
           root: int | None = None) -> np.ndarray | None:
    """The all-reduce, in rounds of slices of ROOTED_SLICE_MAX bytes at most (one, but for large
    arrays); with `root`, only the root reads the reduced slices (None elsewhere)."""
    n, r = g.size(), g.rank()
    ufunc = REDUCERS[op]
    own = np.ascontiguousarray(arr).reshape(-1)
    dtype = own.dtype
    gets = root is None or r == root
    out = buffers.cache.empty(arr.shape, dtype) if gets else None
    flat = out.reshape(-1) if out is not None else None
    signals = g._signals
    assert signals is not None
    name = header.fields["op"]
    inputs: list[int] = []
    scratch = None  # off the root: where this rank's reduced slice waits for the root
    per_round = max(1, ROOTED_SLICE_MAX // dtype.itemsize) * n
    for a in range(0, max(own.size, 1), per_round):
        b = min(own.size, a + per_round)
        bounds = schedule.block_bounds(b - a, n)
        lo, hi = bounds[r]
        if flat is not None:
            mine = flat[a + lo:a + hi]
        else:
            if scratch is None:  # (the first round's slice is the largest)
                scratch = buffers.cache.empty((hi - lo,), dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
            mine = scratch[:hi - lo]
        signals.publish(crossmem.address(own), crossmem.address(mine))
        signal(g, name, header, timeout)  # every rank's input and the place of its slice are said
        inputs = inputs or [signals.published(q) for q in range(n)]
        _fold_from_inputs(g, ufunc, own, a + lo, mine, inputs, name)
        signal(g, name, header, timeout)  # every slice is reduced; no rank reads an input any more
        if flat is not None:
            for q in g.shm.others:  # type: ignore[union-attr]
                qlo, qhi = bounds[q]
                if qhi > qlo:
                    _read(g, q, byte_view(flat[a + qlo:a + qhi]), signals.published(q, shmsignal.ADDRESS_2), name)
        signal(g, name, header, timeout)  # every reader has its slices: the buffers may change
    return out


def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    return reduce(g, arr, op, header, timeout, root)


def reduce_scatter(g: Comm, own: np.ndarray, out: np.ndarray, op: str, header: wire.Header,
                   timeout: float | None) -> None:
    """`out` = block r of every rank's `own` (flat, contiguous), reduced by `op` in rank order."""
    _reduce_block(g, own, g.rank() * out.size, out, op, header, timeout)


def reduce_scatter_v(g: Comm, own: np.ndarray, lengths: list[int], out: np.ndarray, op: str, header: wire.Header,
                     timeout: float | None) -> None:
    """Blocks of any lengths (`reduce_scatter(counts=)`): through the segments where one round
    holds every block (one signal), else as `reduce_scatter`, read from the peers' memory (two).
    The lengths ride in the header, which the first signal of either compares. 10 ranks,
    alternating with the all_to_all and fold: 4 MiB a rank read 0.75x its time; 64 KiB read
    1.24x, through the segments 0.79x."""
    link = g.shm
    assert link is not None
    if shm.share_rounds(lengths, link.slot_size, own.itemsize, g, header.fields["op"]) == 1:
        shm.reduce_scatter_v(g, own, lengths, out, op, header, timeout)
        return
    _reduce_block(g, own, sum(lengths[:g.rank()]), out, op, header, timeout)


def _reduce_block(g: Comm, own: np.ndarray, at: int, out: np.ndarray, op: str, header: wire.Header,
                  timeout: float | None) -> None:
    """`out` = elements [at, at + out.size) of every rank's `own`, read from the peers' memory."""
    signals = g._signals
    assert signals is not None
    name = header.fields["op"]
    signals.publish(crossmem.address(own))
    signal(g, name, header, timeout)  # every rank's input is said
    _fold_from_inputs(g, REDUCERS[op], own, at, out, [signals.published(q) for q in range(g.size())], name)
    signal(g, name, header, timeout)  # no rank reads an input any more: they may change


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    """Every rank but the root reads the root's array (its `out`) straight out of its memory."""
    data = byte_view(out)
    name = header.fields["op"]
    if g.rank() == root:
        _publish(g, crossmem.address(data), name, header, timeout)
    else:
        signal(g, name, header, timeout)
        if len(data):
            _read(g, root, data, g._signals.published(root), name)  # type: ignore[union-attr]
    signal(g, name, header, timeout)  # every rank has it: the root's array may change


def scatter(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray:
    """The root writes its array's shape and dtype into its slot (`shm._descriptor`: only it knows
    them) and says where the array lies; after the signal every other rank reads its block
    straight out of the root's memory; a second signal frees the root's array. Two signals
    whatever the size, where the segments take one a slot."""
    link, signals = g.shm, g._signals
    assert link is not None and signals is not None
    n, r = g.size(), g.rank()
    name = header.fields["op"]
    follow = wire.Header(dict(header.fields, dtype="|u1", shape=[0]))  # the root's dtype and shape are its own
    descriptor = shm._descriptor(g, arr) if r == root else b""
    k = link.next_round()
    if r == root:
        data = byte_view(np.ascontiguousarray(arr))  # alive until the last signal: the peers read it
        link.slot(r, k)[:len(descriptor)] = descriptor
        out = buffers.cache.empty((arr.shape[0] // n,) + arr.shape[1:], arr.dtype)
        step = out.nbytes
        byte_view(out)[:] = data[r * step:(r + 1) * step]
        signals.publish(crossmem.address(data))
        signal(g, name, follow, timeout)
    else:
        signal(g, name, follow, timeout)
        try:
            shape, dtype = shm._described(link.slot(root, k), g, root, n)
            out = declared_empty((shape[0] // n,) + shape[1:], dtype, f"rank {r}: scatter's root, rank {root},")
        except (ProtocolError, MismatchError, MemoryError) as exc:
            raise failed(g, name, exc) from None
        step = out.nbytes
        if step:
            _read(g, root, byte_view(out), signals.published(root) + r * step, name)
    signal(g, name, follow, timeout)  # every rank has its block: the root's array may change
    return out


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    why = shm.ALGORITHM.fits(comm, kind, nbytes)  # an all_to_all of equal blocks needs no mesh there either
    if why is not None:
        return why
    if comm.shm is None or comm.shm.pids is None:
        return ("it needs every rank to read its peers' memory (Linux's process_vm_readv between processes "
                "of one user, signals through shared memory, RINGDIST_SHM_CMA not 0)")
    return None


def all_to_all(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int], check: Check,
               timeout: float | None, into: list[memoryview] | None = None) -> list[tuple[int, memoryview]]:
    """The segments' all_to_all; in a group with no mesh, blocks of any sizes are read straight out
    of the peers' memory where a stream is long (`shm_blocks._all_to_all_laid_out`)."""
    return shm.all_to_all(g, header, blocks, sizes, check, timeout, into=into, read=_read)


ALGORITHM = Algorithm("shm-cma", gather=gather, reduce=reduce, reduce_root=reduce_root, reduce_scatter=reduce_scatter,
                      broadcast=broadcast,
                      all_to_all=all_to_all, all_to_all_even=all_to_all_even, barrier=shm.barrier,
                      scatter=scatter, reduce_scatter_v=reduce_scatter_v, fits=_fits)
