"""The collective algorithms: one module each, each an `Algorithm` record named `ALGORITHM`.

An algorithm has a name (which rides in every header it sends, so ranks that chose
different algorithms fail with MismatchError instead of waiting on each other), one
run function per kind of collective it implements, and `fits`: why it cannot run a
given case (None when it can). Which algorithm runs is the tuning table's choice
(`ringdist.tuning`); `RINGDIST_ALGO` overrides it. Adding an algorithm is a new module
here and a row in that table: modules are found by name.

Kinds and their run functions (all over a `Comm`, `header` already made):
  gather          (comm, arr, out, header, timeout): `out` gets every rank's rows in rank order
  reduce          (comm, arr, op, header, timeout) -> the element-wise reduction, a new array
  reduce_scatter  (comm, own, out, header, timeout): block r of the sum of every rank's flat `own`
  broadcast       (comm, out, root, header, timeout): `out` (filled on the root) on every rank
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("gather", "reduce", "reduce_scatter", "broadcast")


def _always(comm: Any, kind: str, nbytes: int) -> str | None:
    return None


@dataclass(frozen=True)
class Algorithm:
    name: str
    gather: Callable[..., None] | None = None
    reduce: Callable[..., Any] | None = None
    reduce_scatter: Callable[..., None] | None = None
    broadcast: Callable[..., None] | None = None
    fits: Callable[[Any, str, int], str | None] = _always  # (comm, kind, bytes per rank) -> why not

    def kinds(self) -> list[str]:
        return [k for k in KINDS if getattr(self, k) is not None]

    def why_not(self, comm: Any, kind: str, nbytes: int) -> str | None:
        """Why this algorithm cannot run this case, or None."""
        if getattr(self, kind) is None:
            return f"{self.name} has no {kind.replace('_', '-')}"
        return self.fits(comm, kind, nbytes)


def _discover() -> dict[str, Algorithm]:
    found: dict[str, Algorithm] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "common":
            continue
        algorithm = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ALGORITHM", None)
        if isinstance(algorithm, Algorithm):
            found[algorithm.name] = algorithm
    return found


ALGORITHMS: dict[str, Algorithm] = _discover()
