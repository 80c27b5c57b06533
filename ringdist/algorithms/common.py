"""What several algorithms share: the ring's streams, a ring all-gather's flows, the mesh's parts."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import schedule, wire
from ..channel import Channel
from ..comm import Comm
from ..flows import Inflow, Outflow, Segments


def pow2(n: int) -> bool:
    return n & (n - 1) == 0


def needs_mesh(comm: Comm) -> str | None:
    """Why an algorithm on the mesh (a connection to every rank) cannot run here, or None."""
    if comm.mesh is None:
        return f"it needs a connection to every rank, which groups of 2 to 8 ranks have (this one has {comm.size()})"
    return None


def streams(comm: Comm, bounds: list[tuple[int, int]]) -> Iterator[tuple[int, Channel, Channel, int, int]]:
    """(direction, send channel, receive channel, piece index, piece count) of every stream of a
    ring collective whose blocks have these byte bounds."""
    ring = comm.ring
    assert ring is not None
    largest = max(hi - lo for lo, hi in bounds)
    chosen = schedule.streams(largest, len(ring.right), comm.both_ways)
    for index, (direction, lane) in enumerate(chosen):
        send_ch, recv_ch = ((ring.right[lane], ring.left[lane]) if direction == 1
                            else (ring.left[lane], ring.right[lane]))
        yield direction, send_ch, recv_ch, index, len(chosen)


def gather_flows(comm: Comm, out: memoryview, bounds: list[tuple[int, int]], op: str,
                 header: wire.Header | None, unit: int = 1,
                 own: memoryview | None = None) -> tuple[list[Inflow], list[Outflow]]:
    """Flows of a ring all-gather into `out`, block i at byte range bounds[i]; own block in
    place, or sent from `own` (its bytes, not yet copied into `out`).

    Each received byte is forwarded as soon as it lands. `unit` keeps pieces whole elements.
    """
    n, r = comm.size(), comm.rank()
    inflows, outflows = [], []
    base = bounds[r][0]
    for direction, send_ch, recv_ch, index, parts in streams(comm, bounds):
        if parts == 1:
            pieces = [out[lo:hi] for lo, hi in bounds]
            mine = own
        else:
            pieces = []
            for lo, hi in bounds:
                a, b = schedule.piece_bounds(lo // unit, hi // unit, parts, index)
                pieces.append(out[a * unit:b * unit])
            a, b = schedule.piece_bounds(bounds[r][0] // unit, bounds[r][1] // unit, parts, index)
            mine = None if own is None else own[a * unit - base:b * unit - base]
        send, recv = schedule.gather_order(r, n, direction)
        inflow = Inflow(recv_ch, Segments([pieces[i] for i in recv]), op, header)
        sent = [pieces[i] for i in send]
        if mine is not None:
            sent[0] = mine  # the stream starts with this rank's own block
        outflow = Outflow(send_ch, Segments(sent), op, header, source=inflow, head=len(pieces[r]))
        inflows.append(inflow)
        outflows.append(outflow)
    return inflows, outflows


def direct_parts(comm: Comm, out: memoryview, bounds: list[tuple[int, int]]) -> tuple[list[memoryview], list[memoryview]]:
    """A direct all-gather's views of `out`: this rank's block (sent to every rank), and the
    block of each rank in the mesh's order (received from it). One step instead of the
    ring's N-1: small messages pay one wake-up, not N-1 in a row."""
    mesh = comm.mesh
    assert mesh is not None
    lo, hi = bounds[comm.rank()]
    return [out[lo:hi]] * len(mesh.order), [out[bounds[p][0]:bounds[p][1]] for p in mesh.order]


def own_rows(comm: Comm, arr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """This rank's rows of a gather's output."""
    rows = arr.shape[0]
    return out[comm.rank() * rows:(comm.rank() + 1) * rows]


def row_bounds(comm: Comm, arr: np.ndarray) -> list[tuple[int, int]]:
    """Byte bounds of every rank's block in a gather's output."""
    return [(i * arr.nbytes, (i + 1) * arr.nbytes) for i in range(comm.size())]


