"""Hierarchical: groups spanning several hosts with as many ranks on each (`ringdist.hosts`).

Bytes cross between hosts only between ranks with the same index on their hosts (each
such column a direct exchange), and move within a host over the host's shared-memory
link where its ranks built one (`Hierarchy.link`; else over their TCP connections). A
host's network interface then carries each byte the host needs once, where a flat ring
of L ranks per host carries (N-1)/(N-L) times as much for an all-gather.

- all-gather: (1) each rank sends its block to the ranks with its index on the other
  hosts, one direct exchange; (2) on each host, each rank hands the blocks it now holds
  (its column: one per host) to the host's other ranks: written once into its segment,
  copied out by each of them.
- all-reduce: (1) on each host, rank i reduces slice i of the host's arrays (local rank
  order); (2) the ranks with index i on every host all-reduce slice i by a two-shot
  exchange, host x reducing sub-block x in host order, in rounds of at most
  `CROSS_ROUND_BYTES`; (3) on each host the ranks gather the reduced slices. Every
  element is reduced by one rank in one order, so every rank gets the same bits.

Every step is an exchange of the call's header over the group's own connections (the
shared-memory rounds' signals too), so a rank that made another call, or a peer that
fails, is seen as in any other algorithm of the group.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view, fold
from ..comm import Comm
from ..flows import NO_BYTES
from ..hosts import Hierarchy
from ..shm import ShmLink
from .base import Algorithm

# Within a host, blocks of at least this many bytes per rank go through shared memory; smaller
# ones ride with the header of the TCP exchange that a shared-memory round needs anyway.
LOCAL_SHM_MIN = 64 * 1024
# A host without shared memory passes its columns over TCP in rounds of at most this many bytes
# per rank sent (its scratch: this much out, (L-1) times it in), whatever the blocks' size.
HOST_TCP_ROUND = 8 << 20
# The between-hosts reduction works on at most this many bytes of a rank's slice at a time: its
# scratch (the column's sub-blocks before they are reduced) stays this size, whatever the array.
CROSS_ROUND_BYTES = 8 << 20


def _rounds(total: int, step: int) -> list[tuple[int, int]]:
    """[a, b) of each round; one round even for nothing (the call is still checked)."""
    step = max(1, step)
    return [(a, min(total, a + step)) for a in range(0, total, step)] or [(0, 0)]


def _signal(g: Comm, op: str, header: wire.Header, peers: list[int], timeout: float | None) -> None:
    """'My part of this round is in my segment' to and from every other rank of this host."""
    k = len(peers)
    g.exchange(op, [NO_BYTES] * k, [NO_BYTES] * k, header, timeout=timeout, peers=peers)


def _local_link(h: Hierarchy, nbytes: int) -> ShmLink | None:
    # The same answer on every rank of a host: they built (or not) the link together.
    return h.link if nbytes >= LOCAL_SHM_MIN else None


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    h = g.hierarchy
    assert h is not None
    r, m, rows = g.rank(), arr.nbytes, arr.shape[0]
    np.copyto(out[r * rows:(r + 1) * rows], arr)
    data = byte_view(out)
    op = header.fields["op"]
    cross = h.cross_peers
    g.exchange(op, [data[r * m:(r + 1) * m]] * len(cross), [data[p * m:(p + 1) * m] for p in cross], header,
               timeout=timeout, peers=cross)
    local = h.local_peers
    columns = {q: [ranks[h.hosts[h.host].index(q)] for ranks in h.hosts] for q in local}  # the blocks q holds
    mine = [ranks[h.local] for ranks in h.hosts]
    link = _local_link(h, m)
    if link is None:  # the column, packed, to every other rank of the host: one exchange a round
        per = max(1, HOST_TCP_ROUND // len(mine))  # bytes of each block of the column per round
        width = len(mine) * min(per, m)
        pack = np.empty(width, np.uint8)
        theirs = np.empty((len(local), width), np.uint8)  # scratch bounded by the round, not the blocks
        for a, b in _rounds(m, per):
            w = b - a
            for x, p in enumerate(mine):
                pack[x * w:(x + 1) * w] = data[p * m + a:p * m + b]
            g.exchange(op, [memoryview(pack[:len(mine) * w])] * len(local),
                       [memoryview(row[:len(mine) * w]) for row in theirs], header, timeout=timeout, peers=local)
            for row, q in zip(theirs, local):
                for x, p in enumerate(columns[q]):
                    data[p * m + a:p * m + b] = row[x * w:(x + 1) * w]
        return
    index = {q: h.hosts[h.host].index(q) for q in local}
    per = max(1, link.slot_size // len(mine))  # bytes of each block of the column per round
    for a, b in _rounds(m, per):
        k = link.next_round()
        slot, w = link.slot(h.local, k), b - a
        for x, p in enumerate(mine):
            slot[x * w:(x + 1) * w] = data[p * m + a:p * m + b]
        _signal(g, op, header, local, timeout)
        for q in local:
            theirs = link.slot(index[q], k)
            for x, p in enumerate(columns[q]):
                data[p * m + a:p * m + b] = theirs[x * w:(x + 1) * w]


def _piece(bounds: tuple[int, int], a: int, b: int) -> tuple[int, int]:
    """A round [a, b) of offsets into the slice at `bounds`, clipped to its length."""
    lo, hi = bounds
    return lo + min(a, hi - lo), lo + min(b, hi - lo)


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    h = g.hierarchy
    assert h is not None
    ufunc = REDUCERS[op]
    name = header.fields["op"]
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    flat = out.reshape(-1)
    n_local = len(h.hosts[0])
    slices = schedule.block_bounds(own.size, n_local)  # slice j: reduced between hosts by local index j
    widest = max(hi - lo for lo, hi in slices)
    _reduce_scatter_host(g, h, own, flat, slices, widest, ufunc, name, header, timeout)
    lo, hi = slices[h.local]
    _all_reduce_column(g, h, flat[lo:hi], ufunc, name, header, timeout)
    _all_gather_host(g, h, flat, slices, widest, name, header, timeout)
    return out


def _reduce_scatter_host(g: Comm, h: Hierarchy, own: np.ndarray, flat: np.ndarray, slices: list[tuple[int, int]],
                         widest: int, ufunc: np.ufunc, op: str, header: wire.Header, timeout: float | None) -> None:
    """flat[slice of this rank] = its host's arrays' slice, reduced in local rank order."""
    local, me = h.local_peers, h.local
    n_local = len(h.hosts[0])
    index = {q: h.hosts[h.host].index(q) for q in local}
    isz = own.itemsize
    link = _local_link(h, own.nbytes)
    mine = slices[me]
    if link is None:
        step = max(1, CROSS_ROUND_BYTES // isz // n_local)
        scratch = buffers.cache.empty((n_local, min(widest, step)), own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
        for a, b in _rounds(widest, step):
            lo, hi = _piece(mine, a, b)
            rows = [scratch[index[q], :hi - lo] for q in local]
            g.exchange(op, [byte_view(own[slice(*_piece(slices[index[q]], a, b))]) for q in local],
                       [byte_view(row) for row in rows], header, timeout=timeout, peers=local)
            parts = dict(zip(local, rows))
            fold([own[lo:hi] if q == g.rank() else parts[q] for q in h.hosts[h.host]], ufunc, flat[lo:hi])
        return
    step = max(1, link.slot_size // isz // n_local)  # elements of each slice per round
    for a, b in _rounds(widest, step):
        k = link.next_round()
        slot = link.slot(me, k)
        w = b - a
        for j in range(n_local):
            if j == me:
                continue  # this rank's own slice is read from its array, not its segment
            plo, phi = _piece(slices[j], a, b)
            np.copyto(np.frombuffer(slot, own.dtype, phi - plo, j * w * isz), own[plo:phi])
        _signal(g, op, header, local, timeout)
        lo, hi = _piece(mine, a, b)
        parts = {q: np.frombuffer(link.slot(index[q], k), own.dtype, hi - lo, me * w * isz) for q in local}
        fold([own[lo:hi] if q == g.rank() else parts[q] for q in h.hosts[h.host]], ufunc, flat[lo:hi])


def _all_reduce_column(g: Comm, h: Hierarchy, part: np.ndarray, ufunc: np.ufunc, op: str, header: wire.Header,
                       timeout: float | None) -> None:
    """`part` all-reduced with the same slice of the ranks with this rank's index on the other hosts:
    host x reduces sub-block x (in host order) and sends it to the others."""
    cross = h.cross_peers
    n_hosts, me = len(h.hosts), h.host
    host_of = {p: (me + k) % n_hosts for k, p in enumerate(cross, 1)}
    step = max(1, CROSS_ROUND_BYTES // part.itemsize)
    width = -(-min(part.size, step) // n_hosts)  # the widest sub-block of any round
    stack = buffers.cache.empty((n_hosts, width), part.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    for a, b in _rounds(part.size, step):
        sub = schedule.block_bounds(b - a, n_hosts)
        lo, hi = a + sub[me][0], a + sub[me][1]
        rows = stack[:, :hi - lo]
        g.exchange(op, [byte_view(part[a + sub[host_of[p]][0]:a + sub[host_of[p]][1]]) for p in cross],
                   [byte_view(rows[host_of[p]]) for p in cross], header, timeout=timeout, peers=cross)
        rows[me] = part[lo:hi]
        fold(list(rows), ufunc, part[lo:hi])
        g.exchange(op, [byte_view(part[lo:hi])] * len(cross),
                   [byte_view(part[a + sub[host_of[p]][0]:a + sub[host_of[p]][1]]) for p in cross], header,
                   timeout=timeout, peers=cross)


def _all_gather_host(g: Comm, h: Hierarchy, flat: np.ndarray, slices: list[tuple[int, int]], widest: int,
                     op: str, header: wire.Header, timeout: float | None) -> None:
    """Every rank of the host gets every reduced slice."""
    local, me = h.local_peers, h.local
    index = {q: h.hosts[h.host].index(q) for q in local}
    isz = flat.itemsize
    link = _local_link(h, flat.nbytes)
    if link is None:
        lo, hi = slices[me]
        g.exchange(op, [byte_view(flat[lo:hi])] * len(local),
                   [byte_view(flat[slices[index[q]][0]:slices[index[q]][1]]) for q in local], header,
                   timeout=timeout, peers=local)
        return
    step = max(1, link.slot_size // isz)
    for a, b in _rounds(widest, step):
        k = link.next_round()
        lo, hi = _piece(slices[me], a, b)
        np.copyto(np.frombuffer(link.slot(me, k), flat.dtype, hi - lo), flat[lo:hi])
        _signal(g, op, header, local, timeout)
        for q in local:
            qlo, qhi = _piece(slices[index[q]], a, b)
            np.copyto(flat[qlo:qhi], np.frombuffer(link.slot(index[q], k), flat.dtype, qhi - qlo))


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    if comm.hierarchy is None:
        return ("it needs a group on several hosts with as many ranks (2 or more) on each, and no shared "
                "memory across the whole group")
    return None


ALGORITHM = Algorithm("hier", gather=gather, reduce=reduce, fits=_fits)
