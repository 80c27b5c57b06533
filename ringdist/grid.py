"""A Cartesian grid over a group's ranks: MPI's Create_cart, Cart_coords, Cart_rank,
Cart_shift, Cart_sub and Dims_create.

Ranks lie on the grid in row-major order (the last dimension varies fastest), as MPI places
them without reordering, so a grid is arithmetic on the group's ranks: it opens nothing, and
`sub` is a `split`. A neighbour off the edge of a dimension that does not wrap is None (MPI's
PROC_NULL), which `sendrecv` takes as "no such half".

Making a grid and `sub` are collective, as in MPI: every rank's arguments go round the group
in one small all-gather (`_agree`, under its own op name, so it pairs with no other call)
before anything is computed from them. Ranks that passed different grids, or a rank whose
arguments fail their checks, make every rank raise in the same call, naming each rank's
arguments; the group stays usable (every rank made the same calls). Without it, ranks with
different grids would compute different neighbours, and nothing would say so until a
message went astray.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import numpy as np

from . import work
from .calls import _comm
from .collectives import gather_rows
from .comm import Comm
from .errors import MismatchError

# dims_create's bounds: far past any group (a hostfile holds at most 4096 ranks), and within
# what its search answers at once.
MAX_N = 1 << 20
MAX_NDIMS = 16
MAX_GRID_DIMS = 32  # a grid's dimensions (of size 1 too): the agreement's row has room for this many


def dims_create(n: int, ndims: Any) -> tuple[int, ...]:
    """`ndims` sizes whose product is `n`, as close to each other as can be, largest first
    (MPI's Dims_create): 12, 2 -> (4, 3); 16, 3 -> (4, 2, 2). `ndims` may instead be MPI's
    array of sizes, a 0 where a size is free: the free ones are filled, largest first, and the
    others kept: 12, [0, 3] -> (4, 3); 24, [0, 2, 0] -> (4, 2, 3)."""
    fixed: list[int] | None = None
    if not isinstance(ndims, (numbers.Integral, str, bytes)) and hasattr(ndims, "__iter__") and np.ndim(ndims) > 0:
        fixed = list(ndims)
        if not fixed or len(fixed) > MAX_NDIMS or any(
                isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral) or d < 0 for d in fixed):
            raise ValueError(f"dims_create: dims must be 1 to {MAX_NDIMS} sizes, each 0 (free) or positive, "
                             f"got {ndims!r}")
        ndims = len(fixed)
    for name, value, most in (("n", n, MAX_N), ("ndims", ndims, MAX_NDIMS)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"dims_create: {name} must be an integer, got {value!r}")
        if not 1 <= value <= most:
            raise ValueError(f"dims_create: {name} must be 1 to {most}, got {value!r}")
    if fixed is None:
        best = _closest(int(n), int(ndims), int(n))
        assert best is not None
        return best
    given = math.prod(int(d) for d in fixed if d)
    free = sum(1 for d in fixed if not d)
    if n % given or (not free and given != n):
        raise ValueError(f"dims_create: {n} ranks cannot be split over dims {tuple(int(d) for d in fixed)} "
                         f"(the fixed sizes multiply to {given})")
    filled = iter(_closest(int(n) // given, free, int(n) // given) or ()) if free else iter(())
    return tuple(int(d) if d else next(filled) for d in fixed)


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> list[int]:
    """The divisors of `n`, largest first."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]), reverse=True)


@functools.lru_cache(maxsize=65536)
def _closest(n: int, k: int, cap: int) -> tuple[int, ...] | None:
    """The non-increasing `k` factors of `n`, none over `cap`, whose largest and smallest are
    closest (ties: the largest smallest); None if there are none."""
    if k == 1:
        return (n,) if n <= cap else None
    best: tuple[int, ...] | None = None
    for d in _divisors(n):
        if d > cap or d ** k < n:  # the first factor is the largest: at least the k-th root of n
            continue
        rest = _closest(n // d, k - 1, d)
        if rest is not None:
            found = (d,) + rest
            if best is None or (found[0] - found[-1], -found[-1]) < (best[0] - best[-1], -best[-1]):
                best = found
    return best


class Grid:
    """The ranks of `group` (default: the world) on a grid of `dims`, wrapping around in the
    dimensions `periodic` says (one flag for all, or one each)."""

    def __init__(self, dims: Any, periodic: Any = False, *, group: Comm | None = None):
        g = _comm(group, None)
        failure: ValueError | None = None
        try:
            sizes, flags = _checked(g, dims, periodic)
        except ValueError as exc:
            failure, sizes, flags = exc, (), ()
        _agree(g, "Grid", None if failure is not None else [*sizes, *map(int, flags)], failure,
               lambda v: f"dims {tuple(v[:len(v) // 2])} periodic {tuple(bool(f) for f in v[len(v) // 2:])}")
        self.group, self.dims, self.periodic = g, sizes, flags

    def __repr__(self) -> str:
        return f"<ringdist.Grid {self.dims} periodic={self.periodic} of group {self.group.gid!r}>"

    def coords(self, rank: int | None = None) -> tuple[int, ...]:
        """The grid coordinates of `rank` (default: this rank)."""
        r = self.group.rank() if rank is None else self._rank(rank)
        out = []
        for size in reversed(self.dims):
            r, c = divmod(r, size)
            out.append(c)
        return tuple(reversed(out))

    def rank_of(self, coords: Any) -> int | None:
        """The rank at `coords`, wrapped in periodic dimensions; None off the edge of another."""
        cs = tuple(coords)
        if len(cs) != len(self.dims) or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
                                                for c in cs):
            raise ValueError(f"rank {self.group.rank()}: Grid.rank_of: coords must be {len(self.dims)} integers, "
                             f"got {coords!r}")
        r = 0
        for c, size, wraps in zip(cs, self.dims, self.periodic):
            c = int(c)
            if wraps:
                c %= size
            elif not 0 <= c < size:
                return None
            r = r * size + c
        return r

    def shift(self, dim: int, disp: int = 1) -> tuple[int | None, int | None]:
        """`(src, dst)` for a shift of `disp` along dimension `dim` (MPI's Cart_shift): the rank
        `disp` before this one, which sends to it, and the rank `disp` after, which it sends to;
        None off a non-periodic edge."""
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not 0 <= dim < len(self.dims):
            raise ValueError(f"rank {self.group.rank()}: Grid.shift: dim must be 0 to {len(self.dims) - 1}, got {dim!r}")
        if isinstance(disp, bool) or not isinstance(disp, numbers.Integral):
            raise ValueError(f"rank {self.group.rank()}: Grid.shift: disp must be an integer, got {disp!r}")
        here = list(self.coords())
        ahead, behind = list(here), list(here)
        ahead[dim] += int(disp)
        behind[dim] -= int(disp)
        return self.rank_of(behind), self.rank_of(ahead)

    def sub(self, keep: Any) -> Any:
        """Collective: the group of the ranks that share this rank's coordinates in the dimensions
        `keep` (one flag each) leaves out, ranked by their coordinates in the kept ones (MPI's
        Cart_sub): keep=(False, True) on a 2-D grid gives this rank's row. Every rank passes the
        same flags (else every rank raises, as for the grid itself)."""
        g = self.group
        flags = _flags(keep, len(self.dims), alone=False)
        failure = None if flags is not None else ValueError(
            f"rank {g.rank()}: Grid.sub: keep must be {len(self.dims)} flags, got {keep!r}")
        _agree(g, "Grid.sub", None if flags is None else [int(f) for f in flags], failure,
               lambda v: f"keep {tuple(bool(f) for f in v)}")
        assert flags is not None
        here = self.coords()
        color = key = 0
        for c, size, kept in zip(here, self.dims, flags):
            if kept:
                key = key * size + c
            else:
                color = color * size + c
        return g.split(color, key)  # type: ignore[attr-defined]

    def _rank(self, rank: Any) -> int:
        n = self.group.size()
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < n:
            raise ValueError(f"rank {self.group.rank()}: Grid: {rank!r} is not a rank of a group of size {n}")
        return int(rank)


def _checked(g: Comm, dims: Any, periodic: Any) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """`dims` and `periodic` as a grid of group `g` takes them, or ValueError naming what is wrong."""
    try:
        given = list(dims)  # once: a generator is read once
    except TypeError:
        given = []
    sizes = tuple(int(d) for d in given if not isinstance(d, (bool, np.bool_))
                  and isinstance(d, numbers.Integral) and d >= 1)
    if len(sizes) != len(given):
        sizes = ()
    if not sizes:
        raise ValueError(f"rank {g.rank()}: Grid: dims must be positive integers, got {dims!r}")
    if len(sizes) > MAX_GRID_DIMS:
        raise ValueError(f"rank {g.rank()}: Grid: dims has {len(sizes)} dimensions, more than {MAX_GRID_DIMS}")
    if math.prod(sizes) != g.size():
        hint = f" (dims_create({g.size()}, {len(sizes)}) = {dims_create(g.size(), len(sizes))})" \
            if len(sizes) <= MAX_NDIMS else ""
        raise ValueError(f"rank {g.rank()}: Grid: dims {sizes} hold {math.prod(sizes)} ranks, but group "
                         f"{g.gid!r} has {g.size()}{hint}")
    flags = _flags(periodic, len(sizes))
    if flags is None:
        raise ValueError(f"rank {g.rank()}: Grid: periodic must be True, False or {len(sizes)} of them, "
                         f"got {periodic!r}")
    return sizes, flags


def _agree(g: Comm, op: str, values: list[int] | None, failure: ValueError | None,
           describe: Callable[[list[int]], str]) -> None:
    """Every rank's arguments (`values`, None where they failed here: `failure`) in one row each,
    gathered under `op`; every rank raises alike where a rank's failed (ValueError; that rank its
    own) or where ranks' differ (MismatchError naming each rank's, as `describe` puts them)."""
    row = np.zeros((1, 2 + 2 * MAX_GRID_DIMS), np.int64)
    if values is not None:
        row[0, 0], row[0, 1] = 1, len(values)
        row[0, 2:2 + len(values)] = values
    table = work.HERE
    if work.active:  # the exchange queues behind the group's outstanding operations, as split's
        table = work.route(op, g, False, lambda grp: gather_rows(row, group=grp, op=op))
    if table is work.HERE:
        table = gather_rows(row, group=g, op=op)
    if failure is not None:
        raise failure
    me = g.rank()
    failed = [q for q in range(len(table)) if not table[q, 0]]
    if failed:
        raise ValueError(f"rank {me}: {op}: the arguments of rank{'s' if len(failed) > 1 else ''} "
                         f"{', '.join(map(str, failed))} failed their checks there (its error names the problem)")
    seen: dict[str, list[int]] = {}
    for q in range(len(table)):
        seen.setdefault(describe(table[q, 2:2 + table[q, 1]].tolist()), []).append(q)
    if len(seen) > 1:
        parts = [f"rank{'s' if len(qs) > 1 else ''} {', '.join(map(str, qs))}: {what}" for what, qs in seen.items()]
        raise MismatchError(f"rank {me}: {op}: the ranks of group {g.gid!r} passed different arguments: "
                            f"{'; '.join(parts)}")


def _flags(given: Any, n: int, alone: bool = True) -> tuple[bool, ...] | None:
    """`given` as `n` flags: one flag for all (where `alone`), or a sequence of `n` (numpy's bools
    too); None if it is neither."""
    if isinstance(given, (bool, np.bool_)):
        return (bool(given),) * n if alone else None
    try:
        flags = list(given)
    except TypeError:
        return None
    if len(flags) != n or not all(isinstance(f, (bool, np.bool_)) for f in flags):
        return None
    return tuple(bool(f) for f in flags)
