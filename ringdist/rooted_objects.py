"""gather_object and scatter_object: picklable objects to and from one root (mpi4py's
`comm.gather(obj, root)` and `comm.scatter(objs, root)`; torch's `gather_object` and
`scatter_object_list`).

Each object is pickled whole (protocol 5, its buffers inside: one part) and travels as a block
of an all_to_all whose sizes ride in the headers (`algorithms/blocks.py`): only the root's
blocks (scatter), or only the blocks to the root (gather), carry bytes, so each object crosses
once, as a rooted call's data should. Around the exchange, two small steps keep every rank in
step. Before it, every rank's cap (RINGDIST_MAX_OBJECT_BYTES) and the bytes it sends each rank,
to every rank: so every rank knows alike whether every rank could pickle what it sends and
whether every block fits its receiver's cap. After it, whether every rank could unpickle what it
got (`objects._agree`). Where one could not, every rank raises ValueError in the call, naming
it, and the group stays usable.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from typing import Any, Callable

import numpy as np

from . import tuning, work
from .algorithms.blocks import common, sizes_of
from .arrays import NOTHING
from .calls import _comm, _header, check_root
from .channel import Channel
from .collectives import gather_rows
from .comm import Comm
from .errors import ProtocolError, RingError
from .flows import check_same
from .objects import Pickled, _agree, unpickle


INT64_MAX = (1 << 63) - 1


def _pickle(obj: Any, cap: int, op: str, rank: int, what: str = "object") -> tuple[memoryview, ValueError | None]:
    """`obj` pickled whole (one part), or why it cannot be sent."""
    pickled = Pickled(obj, cap, op, rank, whole=True, what=what)
    if pickled.error is not None:
        return memoryview(b""), ValueError(pickled.error)
    return pickled.parts[0], None


def _check(header: Any, root: int, cap: int, sends_to_me: Any):
    """The senders' headers, where the algorithm reads them: the same call, and a block to this
    rank only from whom it may come (`sends_to_me(src)`), within the cap."""
    mine = common(header.fields)

    def check(src: int, fields: dict[str, Any], ch: Channel) -> int:
        theirs = common(fields)
        if theirs != mine:
            check_same(mine, theirs, ch)
        size = sizes_of(fields, ch, 1)[0]
        if not sends_to_me(src) and size:
            raise ProtocolError(f"rank {ch.me}: {ch.describe()} sends {size} bytes in {mine['op']} but is not "
                                f"meant to send this rank anything (root {root})")
        if size > cap:
            raise RingError(f"rank {ch.me}: {mine['op']}: rank {src} declares a {size}-byte object, over "
                            f"RINGDIST_MAX_OBJECT_BYTES={cap} here")
        return 1
    return check


def gather_object(obj: Any, root: int = 0, *, group: Comm | None = None, timeout: float | None = None,
                  async_op: bool = False) -> Any:
    """Every rank's picklable `obj`, in rank order, on the root (its own as a copy); None elsewhere."""
    return _call("gather_object", root, group, timeout, async_op,
                 lambda g: gather_object(obj, root, group=g, timeout=timeout),
                 lambda r, n, cap, at: _gather_blocks(obj, r, n, cap, at))


def scatter_object(objs: Any, root: int = 0, *, group: Comm | None = None, timeout: float | None = None,
                   async_op: bool = False) -> Any:
    """Rank r gets `objs[r]` of the root's sequence of N picklable objects (as a copy); the others
    pass anything (None)."""
    return _call("scatter_object", root, group, timeout, async_op,
                 lambda g: scatter_object(objs, root, group=g, timeout=timeout),
                 lambda r, n, cap, at: _scatter_blocks(objs, r, n, cap, at))


def _call(op: str, root: Any, group: Comm | None, timeout: float | None, async_op: bool,
          again: Callable[[Comm], Any], make: Callable[..., Any]) -> Any:
    """Where the call runs (`again(g)` is it, queued), then `_rooted`; a failure outside the
    exchange's own guard is told to the peers (`Comm.refuse`)."""
    if async_op is not False or work.active:
        r = work.route(op, group, async_op, again)
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, op)
    try:
        return _rooted(g, op, root, make, timeout)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt from an unpickler too: the others wait
        g.refuse(op, exc)
        raise


def _gather_blocks(obj: Any, r: int, n: int, cap: int, root: int) -> tuple[list[memoryview], ValueError | None]:
    data, failure = _pickle(obj, cap, "gather_object", r)
    return [data if p == root else memoryview(b"") for p in range(n)], failure


def _scatter_blocks(objs: Any, r: int, n: int, cap: int, root: int) -> tuple[list[memoryview], ValueError | None]:
    if r != root:
        return [memoryview(b"")] * n, None
    if isinstance(objs, (Mapping, AbstractSet, str, bytes)):  # iterable, but not N objects in rank order
        raise TypeError(f"rank {r}: scatter_object: the root passes a sequence of {n} objects, got "
                        f"{type(objs).__name__}")
    try:
        items = iter(objs)
    except TypeError:
        raise TypeError(f"rank {r}: scatter_object: the root passes a sequence of {n} objects, got "
                        f"{type(objs).__name__}") from None
    items = list(items)  # an error a generator raises is its own
    if len(items) != n:
        raise ValueError(f"rank {r}: scatter_object: the root passes {n} objects, one for each rank, got {len(items)}")
    blocks = []
    for p, item in enumerate(items):
        data, failure = _pickle(item, cap, "scatter_object", r, f"object for rank {p}")
        if failure is not None:
            return [memoryview(b"")] * n, failure
        blocks.append(data)
    return blocks, None


def _rooted(g: Comm, op: str, root: Any, make: Any, timeout: float | None) -> Any:
    n, r = g.size(), g.rank()
    root = check_root(root, g, op)
    cap = g.settings.max_object_bytes
    blocks, failure = make(r, n, cap, root)
    gathering = op == "gather_object"
    if n == 1:
        g.check_usable(op)
        if failure is not None:
            raise failure
        copy = unpickle(blocks[0], [len(blocks[0])], f"rank {r}: {op}: the object from rank {r}")
        return [copy] if gathering else copy
    algorithm = tuning.choose(g, op, tuning.UNKNOWN)  # a forced one that cannot run: ConfigError, before any step
    texts = lambda: tuning.choose(g, "all_gather_object", 0)  # noqa: E731 - carries failures' texts (`_agree`)
    # Every rank's cap and the bytes it sends each rank (-1: it could not pickle), to every rank:
    # each rank then judges every block alike, before any moves (an algorithm that relays or reads
    # peers' layouts need not check them again).
    # (A cap past int64's, 1e20 say, is none: no pickle is that large.)
    mine = np.array([min(cap, INT64_MAX)] + ([-1] * n if failure is not None else [len(b) for b in blocks]), np.int64)
    table = gather_rows(mine, group=g, op=f"{op} (agreement step)", timeout=timeout).reshape(n, n + 1)
    if failure is not None or (table[:, 1:] < 0).any():
        _agree(g, op, texts, failure, timeout)  # every rank raises, naming the first that could not pickle
    over = [(s, p) for s in range(n) for p in range(n) if table[s, 1 + p] > table[p, 0]]
    if over:
        s, p = over[0]
        exc = ValueError(f"rank {r}: {op}: rank {s}'s object for rank {p} pickles to {table[s, 1 + p]} bytes, over "
                         f"rank {p}'s RINGDIST_MAX_OBJECT_BYTES={table[p, 0]}")
        exc.ringdist_everywhere = True  # type: ignore[attr-defined] - judged alike on every rank: the group is in step
        raise exc
    header = _header(g, op, NOTHING, algorithm.name, root=root)
    sends_to_me = (lambda src: r == root) if gathering else (lambda src: src == root)
    got = algorithm.all_to_all(g, header, blocks, [len(b) for b in blocks], _check(header, root, cap, sends_to_me),
                               timeout)
    g.finish(op)
    result, failure = None, None
    try:
        if gathering and r == root:
            result = [unpickle(payload[:size], [size], f"rank {r}: {op}: the object from rank {q}")
                      for q, (size, payload) in enumerate(got)]
        elif not gathering:
            size, payload = got[root]
            result = unpickle(payload[:size], [size], f"rank {r}: {op}: the object from rank {root}")
    except ValueError as exc:
        failure = exc
    _agree(g, op, texts, failure, timeout)
    return result
