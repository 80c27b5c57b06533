"""scan: the prefix reduction (MPI_Scan, and MPI_Exscan with `exclusive=True`).

Rank r gets its own array folded with those of every rank before it, left to right in rank
order: x0 op x1 op ... op xr (exclusive: up to x(r-1), and None on rank 0, where MPI leaves
the result undefined). Every algorithm folds in that order, in place, so the values do not
depend on which one ran: numpy's `acc = x0.copy(); op(acc, x1, out=acc); ...` over C-contiguous
copies of the inputs, element by element (which NaN a fold keeps, and a complex product's last
bit, depend on where numpy's vector loop ends, and the algorithms cut the array differently).
On the chain (past 8 ranks over TCP) a rank before one whose call differs or is refused may
return its prefix, which is right, and raise at its next call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import buffers, tuning, work
from .arrays import as_array, clear_padding, reducible
from .calls import _comm, _header, check_flag, check_reduce_op
from .comm import Comm


def scan(x: Any, *, op: str = "sum", exclusive: bool = False, group: Comm | None = None,
         timeout: float | None = None, async_op: bool = False) -> Any:
    """Rank r's prefix reduction of every rank's `x` (`op`: as all_reduce's), ranks 0..r in
    order; with `exclusive=True` ranks 0..r-1, and None on rank 0. Same shape and dtype on every
    rank; ranks that pass different `op` or `exclusive` fail with MismatchError."""
    if async_op is not False or work.active:
        r = work.route("scan", group, async_op,
                       lambda g: scan(x, op=op, exclusive=exclusive, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "scan")
    try:
        reduction = check_reduce_op(op, g, "scan")
        check_flag(exclusive, "exclusive", g, "scan")
        exclusive = bool(exclusive)
        arr = as_array(x, "scan", g)
        arr = reducible(arr, reduction, "scan", g)
        if g.size() == 1:
            g.check_usable("scan")
            if exclusive:
                return None
            out = buffers.cache.empty(arr.shape, arr.dtype)
            np.copyto(out, arr)
            return out
        algorithm = tuning.choose(g, "scan", arr.nbytes)
        header = _header(g, "scan", arr, algorithm.name, reduce=op, exclusive=exclusive)
        out = algorithm.scan(g, arr, reduction, exclusive, header, timeout)
        g.finish("scan")
    except Exception as exc:
        g.refuse("scan", exc)
        raise
    return clear_padding(out)
