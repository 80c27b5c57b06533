"""`split`: new communicators from an existing one, by color and key (as `MPI_Comm_split`).

Collective over the parent: the ranks exchange `(color, key)` with one small all-gather
over the parent's connections, then each new communicator's members connect among
themselves. The new communicator is of the parent's class.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .collectives import gather_rows
from . import work
from .comm import Comm

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _exchange(parent: Comm, color: Any, key: Any) -> np.ndarray:
    """Every rank's (color, key), in parent rank order, key < 0 made the rank's own: the
    arguments are checked in turn with the parent's other calls, and refused on every rank
    (`Comm.refuse`) if they fail, as a collective's are."""
    try:
        for name, value in (("color", color), ("key", key)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"rank {parent.rank()}: Group.split: {name} must be an integer, got {type(value).__name__}")
            if not _INT64_MIN <= int(value) <= _INT64_MAX:  # the exchange carries them as int64
                raise ValueError(f"rank {parent.rank()}: Group.split: {name}={int(value)} is out of range (a 64-bit signed integer: "
                                 f"{_INT64_MIN} to {_INT64_MAX})")
    except Exception as exc:
        parent.refuse("split", exc)  # the others wait in the exchange: it fails there too
        raise
    key = int(key)
    mine = np.array([[int(color), key if key >= 0 else parent.rank()]], dtype=np.int64)
    return gather_rows(mine, group=parent, op="split")


def split(parent: Comm, color: int, key: int = -1) -> Comm | None:
    """Ranks of `parent` with equal `color` form a new communicator ordered by (`key`, parent rank).

    `key < 0` means this rank's parent rank; `color < 0` means no communicator (returns None).
    """
    table = work.HERE
    if work.active:  # the exchange queues behind the parent's outstanding operations
        table = work.route("split", parent, False, lambda g: _exchange(g, color, key))
    if table is work.HERE:
        table = _exchange(parent, color, key)
    color = int(color)
    me = parent.rank()
    # The new group connects here, not on the progress thread, which goes on moving messages.
    split_no = parent.next_split()
    if color < 0:
        return None
    members = sorted((int(k), p) for p, (c, k) in enumerate(table.tolist()) if c == color)
    parents = [p for _, p in members]
    return type(parent)(
        gid=f"{parent.gid}/{split_no}:{color}", rank=parents.index(me), size=len(parents),
        endpoint=parent.endpoint, settings=parent.settings,
        addresses=[parent.addresses[p] for p in parents],
        world_ranks=[parent.world_ranks[p] for p in parents],
        object_caps=[parent.object_caps[p] for p in parents],
    )
