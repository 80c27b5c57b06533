"""Shared memory: one-copy collectives for a group whose ranks are all on one machine.

Over the group's shared-memory link (`ringdist.shm`: a segment per rank, mapped by every
rank), in rounds of at most one slot: each rank writes its part into its own segment,
every rank exchanges the call's header with every other rank over TCP (the signal that
the data is there, and the check that every rank made the same call; in groups of more
than 8 ranks, the dissemination barrier's rounds instead), and each rank
copies what it needs straight out of its peers' segments. A byte a rank receives costs
one copy by the CPU instead of two by the kernel (send and receive).

- all-gather: each rank writes its block once; every rank copies every other block into
  its output. Cost per rank: α + m + (N-1)m copied per round.
- all-reduce: each rank writes its array; rank p reduces slice p of every rank's array in
  rank order (the same bits as `direct` and `two-shot`) into its segment; after a second
  signal every rank copies every reduced slice. 2α + (1 + 2/N)n copied. With signals through
  memory, on 2 ranks or up to ONE_SIGNAL_REDUCE_MAX: one signal a round, and every rank folds
  every array in rank order (α + n copied, N·n read).
- reduce-scatter: each rank writes its array; rank p reduces block p in rank order. Blocks
  of any lengths (`reduce_scatter(counts=)`, `reduce_scatter_v`): each round a piece of every
  peer's block, the slot shared in proportion to the blocks.
- broadcast: the root writes its array; every other rank copies it.
- gather (rooted): as all-gather, but only the root copies out.
- scatter: the root writes a descriptor (shape, dtype) and the blocks; each rank copies its own.
- barrier: one signal.
- scan: each rank writes its array; rank r folds the arrays of ranks 0..r in rank order. One
  signal a round; rank r reads r arrays.
- all-to-all and scatter (`shm_blocks.py`): each rank writes its blocks for the other
  ranks once; each rank copies its block out of every peer's segment. Blocks of one size
  that fit one slot: the input in place (two copies), one signal.
- blocks of any size to every rank (`shm_blocks.gather_v`: an uneven all-gather, the object
  collectives): each stream headed by its fields; an uneven all-gather's land in place in
  its result.
"""

from __future__ import annotations

import msgpack
import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view, fold, fold_in_place, fold_piece
from ..comm import Comm
from ..errors import MismatchError, ProtocolError, RingError
from .base import Algorithm
from .blocks import declared_empty, dtype_from
from .shm_blocks import all_to_all, failed, gather_v, layout_bytes, signal

_RESULT_ALIGN = 64
# Where rounds signal through memory, reductions on 2 ranks, and on more up to this size, take one
# signal a round: every rank folds every array (N times the arithmetic, one wait for the other
# ranks fewer). Alternating with two signals (benchmarks/alternate.py, 2-core VM): 16 KiB 0.69-0.72x
# the time at N=2, 4, 8; 64 KiB 0.76-0.78x; 256 KiB 0.66x (N=2), 0.95x (4), 0.99x (8); on 2 ranks
# 1 MiB 0.62x, 4 MiB 0.65x, 16 MiB 0.71x, 64 MiB 0.77x.
ONE_SIGNAL_REDUCE_MAX = 256 * 1024


def _rounds(total: int, step: int) -> list[tuple[int, int]]:
    """[a, b) of each round; one round even for nothing (the call is still checked)."""
    return [(a, min(total, a + step)) for a in range(0, total, step)] or [(0, 0)]


def _array(view: memoryview, dtype: np.dtype, count: int, offset: int = 0) -> np.ndarray:
    return np.frombuffer(view, dtype, count, offset) if count else np.empty(0, dtype)


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    link = g.shm
    assert link is not None
    r = link.rank
    rows = arr.shape[0]
    np.copyto(out[r * rows:(r + 1) * rows], arr)  # a strided input is gathered into place here
    dst = byte_view(out)
    m = arr.nbytes
    src = dst[r * m:(r + 1) * m]
    op = header.fields["op"]
    others = link.others
    if m <= link.slot_size:  # one round: the common small call
        slots = link.slots(link.next_round())
        slots[r][:m] = src
        signal(g, op, header, timeout)
        for p in others:
            dst[p * m:(p + 1) * m] = slots[p][:m]
        return
    for a, b in _rounds(m, link.slot_size):
        k = link.next_round()
        link.slot(r, k)[:b - a] = src[a:b]
        signal(g, op, header, timeout)
        for p in others:
            dst[p * m + a:p * m + b] = link.slot(p, k)[:b - a]


def gather_root(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray | None:
    """all_gather's rows on the root alone: the others write their blocks, the root copies them out."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    rows, m = arr.shape[0], arr.nbytes
    op = header.fields["op"]
    out = dst = None
    if r == root:
        out = buffers.cache.empty((n * rows,) + arr.shape[1:], arr.dtype)
        np.copyto(out[r * rows:(r + 1) * rows], arr)
        dst = byte_view(out)
    else:
        src = byte_view(np.ascontiguousarray(arr))
    others = link.others
    for a, b in _rounds(m, link.slot_size):
        k = link.next_round()
        if dst is None:
            link.slot(r, k)[:b - a] = src[a:b]
        signal(g, op, header, timeout)
        if dst is not None:
            for p in others:
                dst[p * m + a:p * m + b] = link.slot(p, k)[:b - a]
    return out


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None,
           root: int | None = None) -> np.ndarray | None:
    """The all-reduce; with `root`, only the root copies the reduced slices out (None elsewhere)."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    ufunc = REDUCERS[op]
    name = header.fields["op"]  # the call's (reduce's, for a rooted one)
    own = np.ascontiguousarray(arr).reshape(-1)
    gets = root is None or r == root
    out = buffers.cache.empty(arr.shape, arr.dtype) if gets else None
    if g._signals is not None and (n == 2 or own.nbytes <= min(ONE_SIGNAL_REDUCE_MAX, link.slot_size)):
        # Signalled through memory, 2 ranks or small arrays: every rank writes its array (a slot
        # per round) and folds all of them itself, in rank order (the same bits): one signal
        # per round instead of two.
        flat = out.reshape(-1) if out is not None else None
        dtype, size = own.dtype, own.size
        if size * dtype.itemsize <= link.slot_size:  # one round: the common small call
            slots = link.slots(link.next_round())
            np.copyto(_array(slots[r], dtype, size), own)
            signal(g, name, header, timeout)
            if flat is not None:
                fold([own if q == r else _array(slots[q], dtype, size) for q in range(n)], ufunc, flat)
            return out
        step = max(1, link.slot_size // own.dtype.itemsize)
        for a, b in _rounds(own.size, step):
            k = link.next_round()
            np.copyto(_array(link.slot(r, k), own.dtype, b - a), own[a:b])
            signal(g, name, header, timeout)
            if flat is not None:
                fold([own[a:b] if q == r else _array(link.slot(q, k), own.dtype, b - a) for q in range(n)],
                     ufunc, flat[a:b])
        return out
    dtype, isz = arr.dtype, arr.dtype.itemsize
    # A slot holds a round's input (c elements) and, past it, this rank's reduced slice (c/N).
    c = max(1, (link.slot_size - _RESULT_ALIGN - 2 * isz) // isz * n // (n + 1))
    result_at = -(-(c * isz) // _RESULT_ALIGN) * _RESULT_ALIGN
    for a, b in _rounds(own.size, c):
        k = link.next_round()
        slots = [link.slot(q, k) for q in range(n)]
        np.copyto(_array(slots[r], dtype, b - a), own[a:b])
        signal(g, name, header, timeout)
        bounds = schedule.block_bounds(b - a, n)
        lo, hi = bounds[r]
        mine = _array(slots[r], dtype, hi - lo, result_at)
        fold([own[a + lo:a + hi] if q == r else _array(slots[q], dtype, hi - lo, lo * isz) for q in range(n)],
             ufunc, mine)
        signal(g, name, header, timeout)
        if out is not None:
            flat = out.reshape(-1)
            for q in range(n):
                qlo, qhi = bounds[q]
                np.copyto(flat[a + qlo:a + qhi], _array(slots[q], dtype, qhi - qlo, result_at))
    return out


def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    return reduce(g, arr, op, header, timeout, root)


def reduce_scatter(g: Comm, own: np.ndarray, out: np.ndarray, op: str, header: wire.Header,
                   timeout: float | None) -> None:
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    per_rank = out.size
    blocks = own.reshape(n, per_rank)
    dtype, isz = own.dtype, own.dtype.itemsize
    c = max(1, link.slot_size // isz // n)  # elements of each block per round
    name, ufunc = header.fields["op"], REDUCERS[op]
    for a, b in _rounds(per_rank, c):
        k = link.next_round()
        slots = [link.slot(q, k) for q in range(n)]
        np.copyto(_array(slots[r], dtype, n * (b - a)).reshape(n, b - a), blocks[:, a:b])
        signal(g, name, header, timeout)
        fold([blocks[r, a:b] if q == r else _array(slots[q], dtype, b - a, r * (b - a) * isz) for q in range(n)],
             ufunc, out[a:b])


def reduce_scatter_v(g: Comm, own: np.ndarray, lengths: list[int], out: np.ndarray, op: str, header: wire.Header,
                     timeout: float | None) -> None:
    """Blocks of any lengths (`reduce_scatter(counts=)`): each round every rank writes a piece of
    each peer's block into its slot, and rank p folds its block's piece of every slot. Pieces are
    shares of a slot in proportion to the blocks (`_shares`), so every block ends in the same
    round and the rounds are as few as the slot allows (one block holding every row takes all of
    each slot, not 1/N); as many on every rank (the lengths ride in the header, which the first
    signal compares). Resident memory is the input, the output and the slots."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    dtype, isz = own.dtype, own.dtype.itemsize
    rounds, per, at = _shares(lengths, link.slot_size, isz, g, header.fields["op"])
    starts = [sum(lengths[:q]) for q in range(n)]
    name, ufunc = header.fields["op"], REDUCERS[op]
    for i in range(rounds):
        k = link.next_round()
        slot = link.slot(r, k)
        for q in range(n):
            a, b = min(i * per[q], lengths[q]), min((i + 1) * per[q], lengths[q])
            if q != r and a < b:
                np.copyto(_array(slot, dtype, b - a, at[q] * isz), own[starts[q] + a:starts[q] + b])
        signal(g, name, header, timeout)
        a, b = min(i * per[r], lengths[r]), min((i + 1) * per[r], lengths[r])
        if a < b:
            fold_piece([own[starts[r] + a:starts[r] + b] if q == r else _array(link.slot(q, k), dtype, b - a, at[r] * isz)
                        for q in range(n)], ufunc, out[a:b])


def share_rounds(lengths: list[int], slot_size: int, itemsize: int, g: Comm, op: str) -> int:
    """The rounds `reduce_scatter_v` takes for blocks of these lengths."""
    return _shares(lengths, slot_size, itemsize, g, op)[0]


def _shares(lengths: list[int], slot_size: int, itemsize: int, g: Comm, op: str) -> tuple[int, list[int], list[int]]:
    """(rounds, elements of each block a round, where each block's piece lies in a slot): the
    fewest rounds whose pieces, each a multiple of 64 bytes where they fit, fit a slot together."""
    room, unit = slot_size // itemsize, max(1, 64 // itemsize)
    busy = [length for length in lengths if length]
    if len(busy) * unit > room:
        unit = 1
    if len(busy) > room:
        raise failed(g, op, RingError(f"rank {g.rank()}: {op} on group {g.gid!r}: {len(busy)} blocks cannot share "
                                      f"a slot of shared memory of {room} elements"))
    rounds = max(1, -(-sum(lengths) // room))
    while True:
        per = [_round_up(-(-length // rounds), unit) if length else 0 for length in lengths]
        if sum(per) <= room:
            break
        rounds += 1
    at = [sum(per[:q]) for q in range(len(lengths))]
    return rounds, per, at


def _round_up(count: int, unit: int) -> int:
    return -(-count // unit) * unit


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    link = g.shm
    assert link is not None
    r = g.rank()
    data = byte_view(out)
    for a, b in _rounds(len(data), link.slot_size):
        k = link.next_round()
        if r == root:
            link.slot(r, k)[:b - a] = data[a:b]
        signal(g, "broadcast", header, timeout)
        if r != root:
            data[a:b] = link.slot(root, k)[:b - a]


def all_to_all_even(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    """Blocks of one size: where a rank's whole input fits one slot, its blocks go in where
    they lie in the input (two copies: before and after its own block), and each rank copies
    its block out of every peer's slot; larger inputs take `all_to_all`'s rounds."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    m = len(data) // n
    if len(data) > link.slot_size:
        if g.mesh is None:  # no header between every pair to carry a stream's layout
            _all_to_all_rounds(g, data, out, header, timeout)
            return
        blocks = [data[p * m:(p + 1) * m] for p in range(n)]
        into = [out[p * m:(p + 1) * m] for p in range(n)]
        got = all_to_all(g, header, blocks, [m] * n, _no_sizes, timeout, into=into)
        for q, (_, block) in enumerate(got):
            if block is not into[q]:
                into[q][:] = block
        return
    k = link.next_round()
    slot = link.slot(r, k)
    lo, hi = r * m, (r + 1) * m
    slot[:lo] = data[:lo]  # every block where it lies in the input, but this rank's own
    slot[hi:len(data)] = data[hi:]
    signal(g, header.fields["op"], header, timeout)
    out[lo:hi] = data[lo:hi]
    for p in link.others:
        out[p * m:(p + 1) * m] = link.slot(p, k)[lo:hi]


def _all_to_all_rounds(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    """Blocks of one size past the mesh (no header between every pair to carry a stream's
    layout): in rounds, each rank writes piece k of every block for a peer into its slot, in
    rank order, and after the round's signal copies its piece out of every peer's slot."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    m = len(data) // n
    op = header.fields["op"]
    out[r * m:(r + 1) * m] = data[r * m:(r + 1) * m]
    for a, b in _rounds(m, max(1, link.slot_size // n)):
        k = link.next_round()
        slot, w = link.slot(r, k), b - a
        for p in link.others:
            slot[p * w:(p + 1) * w] = data[p * m + a:p * m + b]
        signal(g, op, header, timeout)
        for p in link.others:
            out[p * m + a:p * m + b] = link.slot(p, k)[r * w:(r + 1) * w]


def _no_sizes(src: int, fields: dict, ch: object) -> int:  # pragma: no cover - blocks of one size declare nothing
    raise AssertionError("an all_to_all of equal blocks reads no sizes")


_DESCRIPTOR = 1024  # bytes at the head of a scatter's stream: the root's shape and dtype (msgpack)


def scatter(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray:
    """The root's stream, in rounds of a slot: a descriptor (its array's shape and dtype, which
    only it knows), then every rank's block; each rank copies its block out of the root's slot,
    learning its size from the descriptor after the first round. Every round's header is the
    call's with shape and dtype made equal (the root's differs), so the signals compare op,
    root and call number."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    follow = wire.Header(dict(header.fields, dtype="|u1", shape=[0]))
    size = link.slot_size
    out: np.ndarray | None = None
    if r == root:
        data = byte_view(np.ascontiguousarray(arr))
        step = len(data) // n
        descriptor = _descriptor(g, arr)
        out = buffers.cache.empty((arr.shape[0] // n,) + arr.shape[1:], arr.dtype)
        byte_view(out)[:] = data[r * step:(r + 1) * step]
        total = _DESCRIPTOR + len(data)
    a = 0
    while True:
        b = a + size
        k = link.next_round()
        if r == root:
            slot = link.slot(r, k)
            if a == 0:
                slot[:len(descriptor)] = descriptor
            lo, hi = max(a, _DESCRIPTOR), min(b, total)
            if lo < hi:
                slot[lo - a:hi - a] = data[lo - _DESCRIPTOR:hi - _DESCRIPTOR]
        signal(g, op, follow, timeout)
        theirs = link.slot(root, k)
        if out is None:  # round 0, not the root: the descriptor
            try:
                shape, dtype = _described(theirs, g, root, n)
                out = declared_empty((shape[0] // n,) + shape[1:], dtype, f"rank {r}: scatter's root, rank {root},")
            except (ProtocolError, MismatchError, MemoryError) as exc:
                raise failed(g, op, exc) from None
            step = out.nbytes
            total = _DESCRIPTOR + n * step
        if r != root:
            start = _DESCRIPTOR + r * step
            lo, hi = max(a, start), min(b, start + step)
            if lo < hi:
                byte_view(out)[lo - start:hi - start] = theirs[lo - a:hi - a]
        a = b
        if a >= total:
            return out


def _descriptor(g: Comm, arr: np.ndarray) -> bytes:
    """What heads a scatter's stream: the root's array's shape and dtype, for the other ranks. One
    too long for its room (a structured dtype of many fields) fails the call on every rank: the
    others already wait for the root's first signal."""
    head = msgpack.packb({"shape": list(arr.shape), "dtype": wire.dtype_tag(arr.dtype)}, use_bin_type=True)
    if len(head) + 4 > _DESCRIPTOR:
        raise failed(g, "scatter", ValueError(
            f"rank {g.rank()}: scatter on group {g.gid!r}: the description of its array's dtype and shape takes "
            f"{len(head)} bytes, over the {_DESCRIPTOR - 4} shared memory's scatter allows (dtype {arr.dtype})"))
    return len(head).to_bytes(4, "little") + head


def _described(slot: memoryview, g: Comm, root: int, n: int) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a scatter's root wrote at the head of its stream; ProtocolError if
    unreadable, MismatchError for a dtype numpy here does not know (as over TCP)."""
    try:
        length = int.from_bytes(slot[:4], "little")
        fields = msgpack.unpackb(bytes(slot[4:4 + min(length, _DESCRIPTOR - 4)]), raw=False)
        shape = tuple(fields["shape"])
        tag = fields["dtype"]
        if (not shape or len(shape) > 64 or not isinstance(tag, str)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(shape)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        raise ProtocolError(f"rank {g.rank()}: scatter's root, rank {root}, wrote no readable shape and dtype "
                            f"into its shared memory (group {g.gid!r})") from None
    if shape[0] % n:
        raise ProtocolError(f"rank {g.rank()}: root {root} of scatter sends shape {shape}, "
                            f"whose rows do not divide among {n} ranks")
    return shape, dtype_from(tag, f"rank {g.rank()}: scatter's root, rank {root},")


def barrier(g: Comm, header: wire.Header, timeout: float | None) -> None:
    """One signal: every rank has entered the barrier once it returns."""
    signal(g, "barrier", header, timeout)


def scan(g: Comm, arr: np.ndarray, op: str, exclusive: bool, header: wire.Header,
         timeout: float | None) -> np.ndarray | None:
    """Every rank writes its array (a slot per round) and folds the slots of the ranks before it
    (and its own array, unless `exclusive`) in rank order: one signal a round, no message."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    ufunc = REDUCERS[op]
    name = header.fields["op"]
    own = np.ascontiguousarray(arr).reshape(-1)
    take = r if exclusive else r + 1  # ranks folded
    out = buffers.cache.empty(arr.shape, arr.dtype) if take else None
    flat = out.reshape(-1) if out is not None else None
    dtype = own.dtype
    if own.nbytes <= link.slot_size:  # one round: the common small call
        slots = link.slots(link.next_round())
        if r < n - 1:
            np.copyto(_array(slots[r], dtype, own.size), own)
        signal(g, name, header, timeout)
        if flat is not None:
            fold_in_place([own if q == r else _array(slots[q], dtype, own.size) for q in range(take)], ufunc, flat)
        return out
    for a, b in _rounds(own.size, max(1, link.slot_size // dtype.itemsize)):
        k = link.next_round()
        if r < n - 1:  # read by the ranks after this one only
            np.copyto(_array(link.slot(r, k), dtype, b - a), own[a:b])
        signal(g, name, header, timeout)
        if flat is not None:
            fold_in_place([own[a:b] if q == r else _array(link.slot(q, k), dtype, b - a) for q in range(take)],
                          ufunc, flat[a:b])
    return out


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    if comm.shm is None:
        return ("it needs shared memory with every rank of the group: all on one machine, Linux, and "
                "RINGDIST_SHM not 0")
    if kind == "all_to_all" and comm.mesh is None and layout_bytes(comm.size()) > comm.shm.slot_size:
        return (f"its all_to_all in a group of {comm.size()} ranks needs the blocks' layout "
                f"({layout_bytes(comm.size())} bytes) to fit a slot of shared memory ({comm.shm.slot_size})")
    return None


ALGORITHM = Algorithm("shm", gather=gather, reduce=reduce, reduce_scatter=reduce_scatter, broadcast=broadcast,
                      all_to_all=all_to_all, all_to_all_even=all_to_all_even, reduce_root=reduce_root, barrier=barrier,
                      gather_root=gather_root, scatter=scatter, gather_v=gather_v, gather_v_whole=True, scan=scan,
                      reduce_scatter_v=reduce_scatter_v,
                      fits=_fits)
