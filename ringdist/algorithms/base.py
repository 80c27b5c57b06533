"""An algorithm's record: its name, its run functions per kind of collective, and `fits`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("gather", "reduce", "reduce_scatter", "broadcast", "barrier", "all_to_all", "scatter", "gather_v",
         "gather_root", "scan")


def _always(comm: Any, kind: str, nbytes: int) -> str | None:
    return None


@dataclass(frozen=True)
class Algorithm:
    name: str
    gather: Callable[..., None] | None = None
    reduce: Callable[..., Any] | None = None
    reduce_scatter: Callable[..., None] | None = None
    # A reduce-scatter of blocks of any lengths (comm, own, lengths, out, op, header, timeout):
    # `own` flat, its blocks in rank order, lengths[p] elements each; rank p's block of every
    # rank's `own` reduced into rank p's `out`. Optional, on algorithms of the all_to_all kind:
    # without it `reduce_scatter(counts=)` runs the all_to_all and folds what lands.
    reduce_scatter_v: Callable[..., None] | None = None
    broadcast: Callable[..., None] | None = None
    barrier: Callable[..., None] | None = None  # without one, a barrier is the algorithm's gather of one byte
    all_to_all: Callable[..., Any] | None = None
    gather_v: Callable[..., Any] | None = None
    # Its gather_v takes `whole=True`: every rank's bytes land in place, in rank order, in one
    # buffer (`blocks.Gathered`), an uneven all_gather's result with no copy.
    gather_v_whole: bool = False
    gather_root: Callable[..., Any] | None = None
    # A rooted reduce's run (comm, arr, op, root, header, timeout) -> `reduce`'s very bits on the
    # root, None elsewhere, doing less; without it a rooted reduce runs `reduce` on every rank.
    reduce_root: Callable[..., Any] | None = None
    # An all_to_all of equal blocks (comm, data, out, header, timeout): block p of `data` (bytes)
    # to rank p, rank p's block into block p of `out`; optional: without it `all_to_all` runs.
    all_to_all_even: Callable[..., None] | None = None
    # A scatter (comm, arr, root, header, timeout) -> this rank's block, its shape and dtype learned
    # from the root's header (`arr`: the root's array; NOTHING elsewhere); without it an algorithm
    # with `all_to_all` runs a scatter as that, only the root's blocks carrying bytes.
    scatter: Callable[..., Any] | None = None
    # A prefix reduction (comm, arr, op, exclusive, header, timeout) -> rank r's fold of ranks 0..r
    # (exclusive: 0..r-1; None on rank 0), always left to right in rank order: every algorithm's bits alike.
    scan: Callable[..., Any] | None = None
    fits: Callable[[Any, str, int], str | None] = _always  # (comm, kind, bytes per rank) -> why not

    def runs(self, kind: str) -> bool:
        """Whether this algorithm has this kind of collective at all."""
        return (getattr(self, kind) is not None or (kind == "barrier" and self.gather is not None)
                or (kind == "all_to_all" and self.all_to_all_even is not None)
                or (kind == "scatter" and self.all_to_all is not None))

    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.runs(k)]

    def why_not(self, comm: Any, kind: str, nbytes: int) -> str | None:
        """Why this algorithm cannot run this case, or None."""
        if not self.runs(kind):
            return f"{self.name} has no {kind.replace('_', '-')}"
        if kind == "barrier" and self.barrier is None:
            kind = "gather"
        return self.fits(comm, kind, nbytes)
