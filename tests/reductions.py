"""Every reduction a call can name, as numpy computes it (the tests' reference), and the
public call that runs a reduction by its call name (all_<op>, <op>_scatter)."""

from __future__ import annotations

from typing import Any

import numpy as np

import ringdist as rd

UFUNCS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply,
          "band": np.bitwise_and, "bor": np.bitwise_or, "bxor": np.bitwise_xor}


def reduction_of(call: str) -> str:
    """'all_max' -> 'max', 'bxor_scatter' -> 'bxor'."""
    return call.removeprefix("all_").removesuffix("_scatter")


def ufunc_of(call: str) -> Any:
    return UFUNCS[reduction_of(call)]


def run_reduction(call: str, x: Any, group: rd.Group) -> Any:
    """all_sum .. all_prod and sum_scatter by their own names; the others through all_reduce
    and reduce_scatter, as a user names them."""
    if hasattr(rd, call):
        return getattr(rd, call)(x, group=group)
    if call.endswith("_scatter"):
        return rd.reduce_scatter(x, reduction_of(call), group=group)
    return rd.all_reduce(x, reduction_of(call), group=group)


def folded(inputs: list[np.ndarray], call: str) -> np.ndarray:
    """inputs[0] op inputs[1] op ... in rank order, in place (the bits every algorithm promises)."""
    ufunc = ufunc_of(call)
    out = np.array(inputs[0], copy=True)
    for x in inputs[1:]:
        ufunc(out, x, out=out)
    return out
