"""Ring schedules, pure: which block goes where, and how arrays are cut into blocks and pieces.

A "block" is rank i's share of an array (N blocks per array); a "piece" is the part of
every block that one stream carries (one direction of the ring, one lane). Streams in
direction d (+1 clockwise: to the right; -1 counter-clockwise: to the left) walk the
ring one neighbour per step.
"""

from __future__ import annotations

from functools import lru_cache

BIDIRECTIONAL_MIN = 256 * 1024  # blocks at least this large are cut across lanes and ring directions


def block_bounds(count: int, n: int, unit: int = 1) -> list[tuple[int, int]]:
    """Cut `count` items into n contiguous blocks, as even as `unit`-sized steps allow."""
    units = count // unit
    cuts = [(units * i // n) * unit for i in range(n)] + [count]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def streams(largest_block_bytes: int, lanes: int, both_ways: bool = True) -> list[tuple[int, int]]:
    """The (direction, lane) streams an operation uses: one for small blocks; for large ones
    every lane, clockwise, and counter-clockwise too when `both_ways`."""
    if largest_block_bytes < BIDIRECTIONAL_MIN:
        return [(1, 0)]
    return [(direction, lane) for direction in ((1, -1) if both_ways else (1,)) for lane in range(lanes)]


def piece_bounds(lo: int, hi: int, parts: int, index: int) -> tuple[int, int]:
    """The `index`-th of `parts` near-equal slices of [lo, hi)."""
    size = hi - lo
    return lo + size * index // parts, lo + size * (index + 1) // parts


@lru_cache(maxsize=256)
def gather_order(rank: int, n: int, direction: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """All-gather: blocks sent at steps 0..N-2, blocks received at those steps.

    Sent: r, r-d, ..., r-(N-2)d (a received block is forwarded one step later);
    received: r-d, ..., r-(N-1)d.
    """
    send = tuple((rank - s * direction) % n for s in range(n - 1))
    recv = tuple((rank - (s + 1) * direction) % n for s in range(n - 1))
    return send, recv


@lru_cache(maxsize=256)
def reduce_scatter_order(rank: int, n: int, direction: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduce-scatter: rank r ends up holding the fully reduced block r.

    Sent: r-d, r-2d, ..., r-(N-1)d (own contribution first, then partial sums as they are
    reduced); received: r-2d, ..., r-Nd = r.
    """
    send = tuple((rank - (s + 1) * direction) % n for s in range(n - 1))
    recv = tuple((rank - (s + 2) * direction) % n for s in range(n - 1))
    return send, recv


def chain_order(rank: int, n: int, root: int, direction: int) -> tuple[int | None, int | None]:
    """Broadcast chain root -> root+d -> ...: (upstream rank or None, downstream rank or None)."""
    pos = ((rank - root) * direction) % n  # hops from the root
    upstream = None if pos == 0 else (rank - direction) % n
    downstream = None if pos == n - 1 else (rank + direction) % n
    return upstream, downstream


def window_spans(bounds: list[tuple[int, int]], span: int, fold: int) -> list[list[tuple[int, int]]]:
    """The runs of a windowed reduction: in each, a span of every block (empty where a block has
    ended). A block's spans start `span` apart (a multiple of `fold`) and its last one takes a
    rest under `fold` elements too: a fold of a short rest alone (numpy's scalar loop, or its
    one-element reduction) could give bits the whole block's fold, which folds that rest with
    the fold block before it, does not (`flows.REDUCE_BLOCK`)."""
    cuts = []
    for lo, hi in bounds:
        starts = list(range(lo, hi, span)) or [lo]
        if len(starts) > 1 and hi - starts[-1] < fold:
            starts.pop()  # the rest goes with the span before it
        cuts.append([(a, starts[k + 1] if k + 1 < len(starts) else hi) for k, a in enumerate(starts)])
    runs = max(len(c) for c in cuts)
    return [[c[k] if k < len(c) else (hi, hi) for c, (_, hi) in zip(cuts, bounds)] for k in range(runs)]
