"""A Cartesian grid over a group's ranks: MPI's Create_cart, Cart_coords, Cart_rank,
Cart_shift, Cart_sub and Dims_create.

Ranks lie on the grid in row-major order (the last dimension varies fastest), as MPI places
them without reordering, so a grid is arithmetic on the group's ranks: it opens nothing, and
`sub` is a `split`. A neighbour off the edge of a dimension that does not wrap is None (MPI's
PROC_NULL), which `sendrecv` takes as "no such half".
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

from .calls import _comm
from .comm import Comm

# dims_create's bounds: far past any group (a hostfile holds at most 4096 ranks), and within
# what its search answers at once.
MAX_N = 1 << 20
MAX_NDIMS = 16


def dims_create(n: int, ndims: int) -> tuple[int, ...]:
    """`ndims` sizes whose product is `n`, as close to each other as can be, largest first
    (MPI's Dims_create with no dimension fixed): 12, 2 -> (4, 3); 16, 3 -> (4, 2, 2)."""
    for name, value, most in (("n", n, MAX_N), ("ndims", ndims, MAX_NDIMS)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"dims_create: {name} must be an integer, got {value!r}")
        if not 1 <= value <= most:
            raise ValueError(f"dims_create: {name} must be 1 to {most}, got {value!r}")
    best = _closest(int(n), int(ndims), int(n))
    assert best is not None
    return best


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
        if math.prod(sizes) != g.size():
            raise ValueError(f"rank {g.rank()}: Grid: dims {sizes} hold {math.prod(sizes)} ranks, but group "
                             f"{g.gid!r} has {g.size()} (dims_create({g.size()}, {len(sizes)}) = "
                             f"{dims_create(g.size(), len(sizes))})")
        flags = _flags(periodic, len(sizes))
        if flags is None:
            raise ValueError(f"rank {g.rank()}: Grid: periodic must be True, False or {len(sizes)} of them, "
                             f"got {periodic!r}")
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
        Cart_sub): keep=(False, True) on a 2-D grid gives this rank's row."""
        flags = _flags(keep, len(self.dims), alone=False)
        if flags is None:
            raise ValueError(f"rank {self.group.rank()}: Grid.sub: keep must be {len(self.dims)} flags, got {keep!r}")
        here = self.coords()
        color = key = 0
        for c, size, kept in zip(here, self.dims, flags):
            if kept:
                key = key * size + c
            else:
                color = color * size + c
        return self.group.split(color, key)  # type: ignore[attr-defined]

    def _rank(self, rank: Any) -> int:
        n = self.group.size()
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < n:
            raise ValueError(f"rank {self.group.rank()}: Grid: {rank!r} is not a rank of a group of size {n}")
        return int(rank)


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
