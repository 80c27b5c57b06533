"""Collective operations on numpy arrays, written against a group's ring of channels."""

from __future__ import annotations

from typing import Any

import numpy as np

from .group import Group
from .transfer import Inflow, Outflow, Segments

BIDIRECTIONAL_MIN = 256 * 1024  # blocks at least this large travel half clockwise, half counter-clockwise


def _group(group: Group | None) -> Group:
    if group is None:
        from .bootstrap import init

        return init()
    if not isinstance(group, Group):
        raise TypeError(f"group must be a ringdist Group or None, got {type(group).__name__}")
    return group


def _as_input(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.hasobject:
        raise TypeError("ringdist sends raw array bytes; object arrays are not supported")
    if arr.dtype.itemsize == 0:
        raise TypeError(f"dtype {arr.dtype} has no fixed item size")
    return arr.reshape(1) if arr.ndim == 0 else arr


def _bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _pieces(nbytes: int, lanes: int) -> list[tuple[int, int, int, int]]:
    """How a block is cut: (direction, lane, lo, hi) with direction +1 clockwise, -1 counter-clockwise."""
    if nbytes < BIDIRECTIONAL_MIN:
        return [(1, 0, 0, nbytes)]
    pieces = []
    half = nbytes // 2
    for direction, lo, hi in ((1, 0, half), (-1, half, nbytes)):
        step = (hi - lo) // lanes
        for lane in range(lanes):
            end = hi if lane == lanes - 1 else lo + (lane + 1) * step
            pieces.append((direction, lane, lo + lane * step, end))
    return pieces


def ring_gather_flows(group: Group, out: memoryview, block: int, header: dict[str, Any]
                      ) -> tuple[list[Inflow], list[Outflow]]:
    """Flows of a ring all-gather into `out` (N blocks of `block` bytes, this rank's already in place).

    In direction d, rank r sends blocks r, r-d, ..., r-(N-2)d and receives r-d, ..., r-(N-1)d,
    forwarding each received byte as soon as it lands.
    """
    ring = group.ring
    assert ring is not None
    n, r = group.size(), group.rank()
    inflows, outflows = [], []
    for direction, lane, lo, hi in _pieces(block, len(ring.right)):
        def piece(i: int, lo: int = lo, hi: int = hi) -> memoryview:
            return out[i * block + lo:i * block + hi]

        send_ch, recv_ch = (ring.right[lane], ring.left[lane]) if direction == 1 else (ring.left[lane], ring.right[lane])
        inflow = Inflow(recv_ch, Segments([piece((r - (s + 1) * direction) % n) for s in range(n - 1)]), header)
        outflow = Outflow(send_ch, header, Segments([piece((r - s * direction) % n) for s in range(n - 1)]),
                          source=inflow, head=hi - lo)
        inflows.append(inflow)
        outflows.append(outflow)
    return inflows, outflows


def gather_rows(x: Any, *, group: Group | None = None, op: str = "all_gather") -> np.ndarray:
    """all_gather under another op name (so split's exchange cannot pair with a user's all_gather)."""
    g = _group(group)
    arr = _as_input(x)
    rows = arr.shape[0]
    out = np.empty((g.size() * rows,) + arr.shape[1:], dtype=arr.dtype)
    np.copyto(out[g.rank() * rows:(g.rank() + 1) * rows], arr)
    if g.size() == 1:
        g.next_header(op, arr)
        return out
    header = g.next_header(op, arr)
    inflows, outflows = ring_gather_flows(g, _bytes(out), arr.nbytes, header)
    g.run(op, inflows, outflows)
    return out


def all_gather(x: Any, *, group: Group | None = None) -> np.ndarray:
    """Every rank's `x` concatenated along axis 0, in rank order (a 0-d `x` counts as shape (1,)).

    All ranks must pass the same shape and dtype; otherwise every rank raises MismatchError.
    """
    return gather_rows(x, group=group, op="all_gather")
