"""Groups of ranks: the world, and the sub-groups `split` makes, each with its own TCP ring."""

from __future__ import annotations

import numbers
import threading
import weakref
from typing import Any

import numpy as np

from . import transfer, wire
from .endpoint import Endpoint
from .errors import GroupBrokenError, RingError
from .ring import RingLinks
from .settings import Settings

_open_groups: "weakref.WeakSet[Group]" = weakref.WeakSet()


class Group:
    """A set of ranks that run collectives together; `rank()` and `size()` as in MLX.

    Every collective on a group must be called by all its ranks, in the same order.
    Use `close()` (or `with`) to release its connections; open groups close at exit.
    """

    def __init__(self, *, gid: str, rank: int, size: int, endpoint: Endpoint | None,
                 settings: Settings, addresses: list[list[tuple[str, int]]],
                 world_ranks: list[int]):
        self.gid = gid
        self._rank = rank
        self._size = size
        self._endpoint = endpoint
        self.settings = settings
        self._addresses = addresses  # per group rank: the (ip, port) list it listens on
        self._world_ranks = world_ranks  # per group rank: its rank in the world
        self._seq = 0
        self._splits = 0
        self._broken: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.ring: RingLinks | None = None
        if size > 1:
            assert endpoint is not None
            self.ring = RingLinks(endpoint, gid, rank, size, addresses, settings.lanes,
                                  settings.connect_timeout)
        _open_groups.add(self)

    def rank(self) -> int:
        """This process's rank in the group."""
        return self._rank

    def size(self) -> int:
        """Number of ranks in the group."""
        return self._size

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else "open")
        return f"<ringdist.Group {self.gid!r} rank {self._rank} of {self._size} ({state})>"

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- split -------------------------------------------------------------------------------

    def split(self, color: int, key: int = -1) -> "Group | None":
        """Collective: ranks with equal `color` form a new group ordered by (`key`, parent rank).

        `key < 0` means this rank's parent rank; `color < 0` means no group (returns None).
        """
        for name, value in (("color", color), ("key", key)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"Group.split: {name} must be an integer, got {type(value).__name__}")
        color, key = int(color), int(key)
        if key < 0:
            key = self._rank
        from .collectives import gather_rows

        table = gather_rows(np.array([[color, key]], dtype=np.int64), group=self, op="split")
        split_no = self._splits
        self._splits += 1
        if color < 0:
            return None
        members = sorted((int(k), parent) for parent, (c, k) in enumerate(table.tolist()) if c == color)
        parents = [parent for _, parent in members]
        return Group(
            gid=f"{self.gid}/{split_no}:{color}", rank=parents.index(self._rank), size=len(parents),
            endpoint=self._endpoint, settings=self.settings,
            addresses=[self._addresses[p] for p in parents],
            world_ranks=[self._world_ranks[p] for p in parents],
        )

    # ---- running collectives -----------------------------------------------------------------

    def next_header(self, op: str, arr: np.ndarray, **extra: Any) -> dict[str, Any]:
        """Check the group is usable and make the header of this rank's next collective."""
        if self._closed:
            raise RingError(f"rank {self._rank}: group {self.gid!r} is closed")
        if self._broken:
            raise GroupBrokenError(
                f"rank {self._rank}: group {self.gid!r} cannot run {op}: an earlier collective failed "
                f"({self._broken}); its ranks are no longer in step")
        seq = self._seq
        self._seq += 1
        dtype = arr.dtype.str if arr.dtype.fields is None else str(arr.dtype.descr)
        return wire.make_header(op, seq, dtype, arr.shape, **extra)

    def run(self, op: str, inflows: list[transfer.Inflow], outflows: list[transfer.Outflow]) -> None:
        """Drive a collective's flows; on any failure tell the neighbours and mark the group broken."""
        assert self.ring is not None
        try:
            transfer.run(inflows, outflows, self.ring.channels, timeout=self.settings.timeout,
                         op=op, me=self._rank)
        except BaseException as exc:
            self._broken = f"{op}: {type(exc).__name__}: {exc}"
            transfer.abort(outflows, self.ring.channels, exc)
            raise

    def close(self) -> None:
        """Release the group's connections. Idempotent; the group is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        if self.ring is not None:
            self.ring.close()
        if self._endpoint is not None:
            self._endpoint.discard(self.gid)
        _open_groups.discard(self)


def close_all() -> None:
    for group in list(_open_groups):
        group.close()
