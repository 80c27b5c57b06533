"""Pairwise: two ranks exchange their whole arrays once, on their direct connection, and fold.

Each rank receives the other's array straight into its result and folds it in one ufunc
call, the lower rank's operand first: α + nβ. This is recursive doubling's single step.
"""

from __future__ import annotations

from ..comm import Comm
from .base import Algorithm
from .common import needs_mesh
from .doubling import reduce, reduce_root


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    if comm.size() != 2:
        return f"it is for two ranks (this group has {comm.size()})"
    return needs_mesh(comm)


ALGORITHM = Algorithm("pairwise", reduce=reduce, reduce_root=reduce_root, fits=_fits)
