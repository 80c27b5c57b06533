"""What every collective does first: find the communicator, check a root, make the header."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import comm as comm_module, deadlines, wire
from .ops import REDUCE_OPS
from .comm import Comm


def _comm(group: Comm | None, timeout: float | None, op: str | None = None, *, call: str | None = None) -> Comm:
    """The communicator a call runs on, its `timeout` checked: for a collective (`op`), a bad
    timeout is refused on every rank (`Comm.refuse`), as any argument of it that fails a check.
    The errors name the rank and the call (`op`, or `call` for one refused on this rank alone)."""
    name = op or call
    shown = wire.called_as(name) if name else None  # (max_scatter as the reduce_scatter(op='max') it was)
    if group is None:
        g = comm_module.default_made or comm_module.default()
    elif not isinstance(group, Comm):
        raise comm_module.not_a_group(group, shown)
    else:
        g = group
    if timeout is not None:
        try:
            deadlines.check_timeout(timeout)
        except ValueError as exc:
            exc = ValueError(f"rank {g.rank()}: {shown + ': ' if shown else ''}{exc}")
            if op is not None:
                g.refuse(op, exc)
            raise exc from None
    return g


def _header(g: Comm, op: str, arr: np.ndarray, name: str, **extra: Any) -> wire.Header:
    return g.next_header(op, arr, name, **extra)


def check_root(root: Any, g: Comm, op: str) -> int:
    """`root` as a rank of `g`; ValueError otherwise."""
    n = g.size()
    if isinstance(root, bool) or not isinstance(root, numbers.Integral) or not 0 <= root < n:
        raise ValueError(f"rank {g.rank()}: {op}: root {root!r} is not a rank of a group of size {n}")
    return int(root)


def check_reduce_op(op: Any, g: Comm, call: str) -> str:
    """A call's reduction `op` as its all-reduce's name (`all_sum`); ValueError otherwise."""
    if not isinstance(op, str) or op not in REDUCE_OPS:
        ops = REDUCE_OPS + ("avg",) if call in ("all_reduce", "reduce", "reduce_scatter") else REDUCE_OPS
        raise ValueError(f"rank {g.rank()}: {call}: op must be one of {', '.join(ops)}, got {op!r}")
    return f"all_{op}"


def check_flag(value: Any, name: str, g: Comm, call: str) -> None:
    """TypeError unless the flag `name` is True or False (numpy's bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"rank {g.rank()}: {wire.called_as(call)}: {name} must be True or False, got {value!r}")
