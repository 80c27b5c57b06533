"""Collectives and messages of picklable Python objects.

Objects are pickled with protocol 5: numpy arrays (and other buffers) inside travel as
out-of-band parts, sent from their own memory and unpickled as views of the one buffer
they land in, so they cost no copy beyond the network's. The header declares the byte
length of every part before any byte of them moves: a receiver allocates only what it
declares, and never more than RINGDIST_MAX_OBJECT_BYTES (default 1 GiB; a sender refuses an
object larger than its own or a receiver's, with an error naming whose, and its peers raise too). Unpickling runs
code of the sender's choosing: objects are only accepted from authenticated members of
the job (every connection passed the handshake with the job's secret).
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any, Callable

import msgpack
import numpy as np

from . import buffers, tuning, wire, work
from .algorithms.blocks import common, sizes_of
from .arrays import NOTHING
from .calls import _comm, _header, check_root
from .collectives import gather_rows
from .channel import Channel, peer_name
from .comm import Comm
from .errors import MismatchError, ProtocolError, RingError, known
from .flows import check_same



# The most bytes an object's list of part lengths may take in a header (a header is at most
# wire.MAX_CONTROL): an object of more buffers than that lists (some 10,000: a list of small
# arrays) is pickled with its buffers inside, one part (a copy more, on each side).
SIZES_BYTES_MAX = wire.MAX_CONTROL // 2
# Characters of a pickling or unpickling failure that the other ranks hear (in a header; `_agree`).
FAILURE_CHARS = 2000
# Out-of-band buffers start on this boundary of the payload where the sender can place them (the
# pickle padded to it) and are copied to it where a receiver finds them off it (after a buffer
# whose length is not a multiple of it): an array made on a buffer off its dtype's alignment is
# unaligned (numpy's slow loops; C code reading it by pointer). numpy's largest alignment.
ALIGN = 16


class Pickled:
    """An object as parts to send (the pickle, then its out-of-band buffers; with `whole`, one
    part, its buffers inside), or why it cannot be sent. `what` names it in that error."""

    def __init__(self, obj: Any, cap: int, op: str, rank: int, whole: bool = False, what: str = "object",
                 whose_cap: str = ""):
        self.parts: list[memoryview] = []
        self.error: str | None = None
        out_of_band: list[pickle.PickleBuffer] = []
        try:
            main = pickle.dumps(obj, protocol=5, buffer_callback=None if whole else out_of_band.append)
            if out_of_band:  # its buffers start aligned where they land (bytes past its STOP are ignored)
                main += bytes(-len(main) % ALIGN)
            self.parts = [memoryview(main)] + [_raw(b) for b in out_of_band]
            if len(self.parts) > 1 and len(msgpack.packb([len(p) for p in self.parts])) > SIZES_BYTES_MAX:
                self.parts = [memoryview(pickle.dumps(obj, protocol=5))]  # its buffers inside the pickle
        except Exception as exc:  # noqa: BLE001 - whatever pickling raised, every rank hears of it
            # As every rank reads it: a lone surrogate (an undecodable file name) escaped, or no
            # header could carry it.
            self.error = (f"rank {rank}: {op}: the {what} cannot be pickled: {_text(exc)}"
                          .encode("utf-8", "backslashreplace").decode("utf-8"))
            self.parts = []
            return
        total = sum(map(len, self.parts))
        if total > cap:
            limit = f"{whose_cap}'s RINGDIST_MAX_OBJECT_BYTES" if whose_cap else "RINGDIST_MAX_OBJECT_BYTES"
            self.error = f"rank {rank}: {op}: the pickled {what} is {total} bytes, over {limit}={cap}"
            self.parts = []

    @property
    def fields(self) -> dict[str, Any]:
        """What the header says of it: its parts' byte lengths, or the error."""
        if self.error is not None:  # cut as an unpickling failure's text is (`_agree`): a header is bounded
            return {"sizes": [], "failed": self.error[:FAILURE_CHARS]}
        return {"sizes": [len(p) for p in self.parts]}

    def raise_error(self) -> None:
        if self.error is not None:
            raise ValueError(self.error)

    def sending(self) -> "_Sending":
        """A context in which an error raised while this rank sends its header gives way to this
        rank's own failure to pickle, if it had one (a peer's error may be about it)."""
        return _Sending(self)


class _Sending:
    def __init__(self, pickled: Pickled):
        self.pickled = pickled

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if exc is not None and self.pickled.error is not None:
            raise ValueError(self.pickled.error) from exc


def sending_cap(g: Comm, receivers: Any) -> tuple[int, str]:
    """The most bytes an object this rank sends to `receivers` (group ranks) may pickle to, and
    whose limit that is ("" for this rank's own): the least of this rank's RINGDIST_MAX_OBJECT_BYTES
    and each receiver's, where the rendezvous's table said it (`Comm.object_caps`). A sender
    refuses an object over a receiver's limit as over its own, so every rank hears of it in
    the header and raises alike (a receiver that refused it from the header broke the group)."""
    cap, whose = g.settings.max_object_bytes, ""
    for q in receivers:
        theirs = g.object_caps[q]
        if theirs is not None and theirs < cap:
            cap, whose = theirs, f"rank {q}"
    return cap, whose


def _told_failure(g: Comm, op: str, own: Pickled | None, got: dict[int, tuple[dict[str, Any], Any]]) -> None:
    """After an object collective's exchange: where a sender could not pickle its object (or
    it was over its cap), every rank raises ValueError in the call, naming it (the sender its
    own error). Every rank read the same headers, so every rank raises alike and the group stays
    usable, as after an unpickling failure (`_agree`, not needed: nothing was unpickled)."""
    if own is not None and own.error is not None:
        exc = ValueError(own.error)
    else:
        failed = sorted(q for q, (fields, _) in got.items() if isinstance(fields.get("failed"), str))
        if not failed:
            return
        q = failed[0]
        exc = ValueError(f"rank {g.rank()}: {op} failed on rank {q}: {got[q][0]['failed']}")
    exc.ringdist_everywhere = True  # type: ignore[attr-defined] - raised alike on every rank: the group is in step
    raise exc


def _raw(buffer: pickle.PickleBuffer) -> memoryview:
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: one copy
        return memoryview(bytes(buffer))


def unpickle(payload: memoryview, sizes: list[int], whose: str) -> Any:
    """The object whose parts (the pickle, then its buffers) lie back to back in `payload`;
    one that cannot be unpickled here is a ValueError saying `whose` it is ("rank 1: recv_object:
    the object from rank 0"), the unpickler's own error chained to it. A buffer that does not
    start on an ALIGN boundary (one after a buffer of odd length) is copied to one that does: an
    array made on it would be unaligned (numpy's slow loops; C code reading it by pointer)."""
    parts, at = [], 0
    for k in sizes:
        part = payload[at:at + k]
        if parts and k and np.frombuffer(part, np.uint8).ctypes.data % ALIGN:
            aligned = np.empty(k, np.uint8)
            aligned[:] = np.frombuffer(part, np.uint8)
            part = memoryview(aligned)
        parts.append(part)
        at += k
    try:
        return pickle.loads(parts[0], buffers=parts[1:])
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling runs the sender's classes' code
        raise ValueError(f"{whose} cannot be unpickled here: {_text(exc)}") from exc


def _text(exc: BaseException) -> str:
    """'Type: message' of an error a pickler or unpickler raised, whose own __str__ may raise too."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - a user's class's __str__
        return f"{type(exc).__name__}: (its message cannot be shown: str() of it raised)"



def _agree(g: Comm, op: str, algorithm: Any, failure: ValueError | None, timeout: float | None) -> None:
    """After an object collective's unpickling: every rank hears whether every rank could
    unpickle what it got (an object may unpickle on its sender and not elsewhere: a class
    defined on one rank only). A byte from every rank says whether it could (an all_gather
    under the op `<op> (agreement step)`); where one could not, one more step of the collective's own
    algorithm carries every rank's failure, and every rank raises ValueError in the call,
    naming it. The group stays usable: every rank made the same calls and raised in the same one."""
    flags = gather_rows(np.array([failure is not None], np.uint8), group=g, op=f"{op} (agreement step)", timeout=timeout)
    if not flags.any():
        return
    if callable(algorithm):  # chosen only when a failure's texts must go
        algorithm = algorithm()
    header = _header(g, op, NOTHING, algorithm.name)
    text = ("" if failure is None else str(failure))[:FAILURE_CHARS].encode("utf-8", "replace")

    @_about_sender
    def check(src: int, fields: dict[str, Any], ch: Channel) -> int:
        mine = common(header.fields)
        if common(fields) != mine:
            check_same(mine, common(fields), ch)
        sizes = sizes_of(fields, ch, 1)
        if sizes[0] > 4 * FAILURE_CHARS:
            raise RingError(f"rank {ch.me}: {op}: rank {src} declares a {sizes[0]}-byte failure, over "
                            f"{4 * FAILURE_CHARS}")
        return 1

    got = algorithm.gather_v(g, header, ([memoryview(text)], {"sizes": [len(text)]}), check, timeout)
    g.finish(op)
    if failure is not None:
        exc = failure  # the unpickler's own error chained to it
    else:
        failed = sorted(q for q, (fields, _) in got.items() if fields["sizes"][0])
        if not failed:
            return
        q = failed[0]
        exc = ValueError(f"rank {g.rank()}: {op} failed on rank {q}: "
                         f"{bytes(got[q][1][:got[q][0]['sizes'][0]]).decode('utf-8', 'replace')}")
    exc.ringdist_everywhere = True  # type: ignore[attr-defined] - raised alike on every rank: the group is in step
    raise exc


def _unpickled(make: Any) -> tuple[Any, ValueError | None]:
    """`make()`, or why it could not unpickle (`unpickle`'s ValueError)."""
    try:
        return make(), None
    except ValueError as exc:
        return None, exc


def _copy(pickled: Pickled, whose: str) -> Any:
    """This rank's own object as every other rank sees it (a copy, sharing no memory)."""
    sizes = [len(p) for p in pickled.parts]
    data = memoryview(buffers.cache.empty((sum(sizes),), np.dtype(np.uint8)))  # one copy, into reused memory
    at = 0
    for part in pickled.parts:
        data[at:at + len(part)] = part
        at += len(part)
    return unpickle(data, sizes, whose)


def _about_sender(check: Callable[[int, dict[str, Any], Channel], int]) -> Callable[[int, dict[str, Any], Channel], int]:
    """A check of the header rank `src` sent, whose errors carry that rank (`errors.known`)."""
    def checked(src: int, fields: dict[str, Any], ch: Channel) -> int:
        try:
            return check(src, fields, ch)
        except RingError as exc:
            known(exc, rank=ch.me, group=ch.group, peer=src)
            raise
    return checked


def _object_check(header: wire.Header, cap: int, sender: Any = None):
    """A check of the senders' headers: the same call, and a declared size within the cap
    (`sender(src)`: whether `src` sends an object; by default every rank does)."""
    mine = common(header.fields, ("failed",))

    @_about_sender
    def check(src: int, fields: dict[str, Any], ch: Channel) -> int:
        theirs = common(fields, ("failed",))
        if theirs != mine:
            check_same(mine, theirs, ch)
        sizes = sizes_of(fields, ch)
        if isinstance(fields.get("failed"), str):  # raised on every rank once the exchange is done (`_told_failure`)
            if sizes:
                raise ProtocolError(f"rank {ch.me}: {mine['op']}: {peer_name(ch, src)} says it could not send its object "
                                    f"yet declares parts of {sizes!r}")
            return 1
        if sender is not None and not sender(src):
            if sizes:
                raise MismatchError(f"rank {ch.me}: {mine['op']}: {peer_name(ch, src)} sends an object but is not the root")
            return 1
        if not sizes:
            raise MismatchError(f"rank {ch.me}: {mine['op']}: {peer_name(ch, src)} sends no object")
        if sum(sizes) > cap:
            raise RingError(f"rank {ch.me}: {mine['op']}: {peer_name(ch, src)} declares a {sum(sizes)}-byte object, over "
                            f"RINGDIST_MAX_OBJECT_BYTES={cap} here")
        return 1
    return check


def all_gather_object(obj: Any, *, group: Comm | None = None, timeout: float | None = None,
                      async_op: bool = False) -> Any:
    """Every rank's picklable `obj`, in rank order (this rank's own as a copy)."""
    if async_op is not False or work.active:
        r = work.route("all_gather_object", group, async_op,
                       lambda g: all_gather_object(obj, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "all_gather_object")
    try:
        return _all_gather_object(g, obj, timeout)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt from an unpickler too: the others wait
        g.refuse("all_gather_object", exc)  # failed here outside the algorithm's guard: the others are told
        raise


def _all_gather_object(g: Comm, obj: Any, timeout: float | None) -> list[Any]:
    n, r = g.size(), g.rank()
    cap = g.settings.max_object_bytes
    limit, whose = sending_cap(g, range(n))
    pickled = Pickled(obj, limit, "all_gather_object", r, whose_cap=whose)
    if n == 1:
        g.check_usable("all_gather_object")
        pickled.raise_error()
        return [_copy(pickled, f"rank {r}: all_gather_object: the object from rank {r}")]
    algorithm = tuning.choose(g, "all_gather_object", 0)
    header = _header(g, "all_gather_object", NOTHING, algorithm.name)
    with pickled.sending():
        got = algorithm.gather_v(g, header, (pickled.parts, pickled.fields), _object_check(header, cap), timeout)
        g.finish("all_gather_object")
    _told_failure(g, "all_gather_object", pickled, got)
    whose = f"rank {r}: all_gather_object: the object from rank "
    objects, failure = _unpickled(lambda: [
        _copy(pickled, f"{whose}{q}") if q == r else unpickle(got[q][1], got[q][0]["sizes"], f"{whose}{q}")
        for q in range(n)])
    _agree(g, "all_gather_object", algorithm, failure, timeout)
    return objects


def broadcast_object(obj: Any, root: int = 0, *, group: Comm | None = None, timeout: float | None = None,
                     async_op: bool = False) -> Any:
    """The root's picklable `obj` on every rank (the root a copy, as every rank); others pass anything."""
    if async_op is not False or work.active:
        r = work.route("broadcast_object", group, async_op,
                       lambda g: broadcast_object(obj, root, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "broadcast_object")
    try:
        return _broadcast_object(g, obj, root, timeout)
    except BaseException as exc:
        g.refuse("broadcast_object", exc)
        raise


def _broadcast_object(g: Comm, obj: Any, root: Any, timeout: float | None) -> Any:
    n, r = g.size(), g.rank()
    root = check_root(root, g, "broadcast_object")
    cap = g.settings.max_object_bytes
    pickled = None
    if r == root:  # (only the root sends: only its limit is looked up)
        limit, whose = sending_cap(g, range(n))
        pickled = Pickled(obj, limit, "broadcast_object", r, whose_cap=whose)
    if n == 1:
        g.check_usable("broadcast_object")
        pickled.raise_error()  # type: ignore[union-attr]
        return _copy(pickled, f"rank {r}: broadcast_object: the object from rank {r}")  # type: ignore[arg-type]
    algorithm = tuning.choose(g, "broadcast_object", 0)
    header = _header(g, "broadcast_object", NOTHING, algorithm.name, root=root)
    mine = (pickled.parts, pickled.fields) if pickled is not None else ([], {"sizes": []})
    with pickled.sending() if pickled is not None else contextlib.nullcontext():
        got = algorithm.gather_v(g, header, mine, _object_check(header, cap, lambda src: src == root), timeout)
        g.finish("broadcast_object")
    _told_failure(g, "broadcast_object", pickled, {q: got[q] for q in got if q == root})
    whose = f"rank {r}: broadcast_object: the object from rank {root}"
    if pickled is not None:  # a copy, as every rank gets: never the object itself
        obj, failure = _unpickled(lambda: _copy(pickled, whose))
    else:
        fields, payload = got[root]
        obj, failure = _unpickled(lambda: unpickle(payload, fields["sizes"], whose))
    _agree(g, "broadcast_object", algorithm, failure, timeout)
    return obj
