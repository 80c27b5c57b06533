"""What every collective does first: find the communicator, check a root, make the header."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import comm as comm_module, deadlines, wire
from .comm import Comm


def _comm(group: Comm | None, timeout: float | None) -> Comm:
    if timeout is not None:
        deadlines.check_timeout(timeout)
    if group is None:
        return comm_module.default_made or comm_module.default()
    if not isinstance(group, Comm):
        raise TypeError(f"group must be a ringdist Group or None, got {type(group).__name__}")
    return group


def _header(g: Comm, op: str, arr: np.ndarray, name: str, **extra: Any) -> wire.Header:
    return g.next_header(op, arr, name, **extra)


def check_root(root: Any, g: Comm, op: str) -> int:
    """`root` as a rank of `g`; ValueError otherwise."""
    n = g.size()
    if isinstance(root, bool) or not isinstance(root, numbers.Integral) or not 0 <= root < n:
        raise ValueError(f"{op}: root {root!r} is not a rank of a group of size {n}")
    return int(root)
