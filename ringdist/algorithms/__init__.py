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
  reduce_scatter  (comm, own, out, op, header, timeout): block r of every rank's flat `own` reduced by `op`
  broadcast       (comm, out, root, header, timeout): `out` (filled on the root) on every rank
  barrier         (comm, header, timeout): returns once every rank has entered it (without
                  one, an algorithm's barrier is its gather of one byte per rank)
  all_to_all      (comm, header, blocks, check, timeout) -> the blocks received, by source rank:
                  blocks[p] (bytes) goes to rank p; sizes ride in the headers (`blocks.py`)
  gather_v        (comm, header, parts, check, timeout) -> {source: (its header, its bytes)}:
                  this rank's parts to every rank, of any size (`blocks.py`); where the record's
                  `gather_v_whole`, also whole=True: every rank's bytes in rank order in one
                  buffer (`blocks.Gathered`), an uneven all_gather's result as it lands
  gather_root     (comm, arr, root, header, timeout) -> every rank's rows in rank order on
                  the root, None elsewhere
  reduce_root     (comm, arr, op, root, header, timeout) -> `reduce`'s result (the same bits)
                  on the root, None elsewhere; optional: without it a rooted reduce runs `reduce`
  reduce_scatter_v (comm, own, lengths, out, op, header, timeout): block r (lengths[r] elements;
                  the blocks in rank order in flat `own`) of every rank reduced by `op` into
                  `out`; optional, on algorithms with `all_to_all`: without it
                  `reduce_scatter(counts=)` runs the all_to_all and folds what lands
  all_to_all_even (comm, data, out, header, timeout): block p of `data` to rank p, rank p's
                  block into block p of `out`, every block the same size; optional: without it
                  an all_to_all without splits runs `all_to_all`
  scatter         (comm, arr, root, header, timeout) -> this rank's row block of the root's `arr`
                  (NOTHING elsewhere), learned from the root's header; an algorithm without it
                  that has `all_to_all` runs a scatter as that, only the root's blocks carrying bytes
  scan            (comm, arr, op, exclusive, header, timeout) -> the fold of ranks 0..r's arrays
                  (exclusive: 0..r-1, None on rank 0) in rank order, left to right: the same bits
                  whichever algorithm runs it
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import KINDS, Algorithm

__all__ = ["ALGORITHMS", "KINDS", "Algorithm"]

def _discover() -> dict[str, Algorithm]:
    found: dict[str, Algorithm] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in ("base", "common", "blocks"):
            continue
        algorithm = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ALGORITHM", None)
        if isinstance(algorithm, Algorithm):
            found[algorithm.name] = algorithm
    return found


ALGORITHMS: dict[str, Algorithm] = _discover()
