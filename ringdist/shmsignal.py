"""Signals through shared memory: "my part of this round is in my segment", with no message.

A shared-memory round (`algorithms/shm.py`) ends with a signal: every rank says its part is
in its segment and waits until every peer has said so too, checking that every rank made
the same call. Over TCP that is the call's header to and from every peer: 2(N-1) messages
and as many wake-ups, most of a small call's time. Here each rank writes the signal into
the control page at the start of its own segment (`ringdist.shm`) and reads its peers':

  word 0  signals given so far (signal s is given when this word becomes s + 1)
  word 1  fingerprint (CRC-32) of the header of the signal with an even number; word 2: odd
  word 3  1 + the number of the collective this rank is in (`Comm.next_header`), word 4 the
          fingerprint of its op and algorithm (the rest of a header may differ by rank: a
          scatter's root's has the shape), word 6 the length of its header, at byte 128 (`HEADER_AT`)
  word 5  nonzero while the rank sleeps in the kernel waiting for a signal
  word 7  where this call's block lies in the rank's memory, for peers that read it from
          there (`crossmem`); written before the signal that says it is there; word 8 a
          second such place (a reduction's input, then its result: both said at once, for a
          peer may still read the first after this rank has moved on to the second)

Only the owner writes its page. A signal's fingerprint is written before its count, and
x86-64 keeps stores in order, so a peer that sees the count sees the fingerprint (other
architectures signal over TCP). A peer can give signal s + 2 only after this rank gave
s + 1, so the word of s's parity is still s's when this rank reads it.

Waiting spins as the TCP path does (`RINGDIST_SPIN_US`, yielding the core when ranks
outnumber cores), then sleeps in the kernel: the rank sets its word 5, looks once more, and
polls its eventfd (handed to every peer with its segment) and its TCP connections. A rank
that signals writes its peers' eventfds only when their word 5 is set. Each side's store
(the count; word 5) and its next load (word 5; the counts) are a store then a load of
different words, which x86-64 may reorder (the store waits in the core's store buffer): both
could read the old word, and the sleeper would miss its wake-up. A full fence between them
(`fence`: a lock's atomic instruction) rules that out. The sleep is cut into slices as
well, so a rank that never hears a wake-up still looks again.

On the progress thread (`work`) the wait also drives that thread's point-to-point flows, as
the engine's waits do, so an isend followed by a collective keeps moving.

Failures are seen as on TCP:
- a peer's different call: a different fingerprint for the same signal, or a peer whose
  announced call has the same number and another op or algorithm, or a later number, or a peer whose
  TCP connection carries a header (a call without shared memory) while it has not given
  this signal: MismatchError, naming both calls (a header already read, behind the last
  call's bytes, is looked at before the first sleep: it wakes no poll);
- a peer that died: its connection closes (PeerLostError), or the ABORT it or another rank
  sent arrives;
- a stalled peer: RingTimeoutError after the call's timeout.
The error is sent to every peer as an ABORT and breaks the group, as on TCP.
"""

from __future__ import annotations

import os
import platform
import select
import sys
import threading
import time
import zlib
from types import SimpleNamespace
from typing import Any

import msgpack

from . import aborts, channel, deadlines, engine, wire
from .errors import MismatchError, PeerLostError, ProtocolError, RingTimeoutError, known
from .flows import check_same

CONTROL = 4096  # bytes of the control page at the start of every segment
HEADER_AT = 128  # where a rank's current call's header starts in its page (after 16 words)
_HEADER_ROOM = CONTROL - HEADER_AT - 16  # up to the cross-memory probe's bytes (`shm._NONCE_AT`)
SIGNALS, FP_EVEN, FP_ODD, CALL, CALL_FP, ASLEEP, HEADER_LEN, ADDRESS, ADDRESS_2 = range(9)
_WORDS_BYTES = 8 * (ADDRESS_2 + 1)
_SLICE_FIRST, _SLICE_MOST = 0.001, 0.064  # seconds of one sleep: the first, and the longest
_SPIN_PIECE = 0.005  # seconds of spinning between looks at the connections (ABORTs, lost peers, timeout)


def supported() -> bool:
    """Whether signals can go through shared memory here: Linux (eventfd) on x86-64 (ordered stores)."""
    return (sys.platform.startswith("linux") and hasattr(os, "eventfd")
            and platform.machine().lower() in ("x86_64", "amd64"))


fingerprint = zlib.crc32  # of a header's body: bytes -> int

_FENCE = threading.Lock()


def fence() -> None:
    """A full memory fence: acquiring a lock is an atomic read-modify-write (`lock cmpxchg` in
    glibc's semaphores), which x86-64 does not reorder with earlier stores or later loads."""
    _FENCE.acquire()
    _FENCE.release()


def call_fingerprint(op: str, path: str) -> int:
    return zlib.crc32(f"{op}\0{path}".encode())


class Signals:
    """One rank's view of every rank's control page, and its peers' eventfds."""

    def __init__(self, rank: int, pages: dict[int, memoryview], wake: dict[int, int], others: list[int]):
        self.rank = rank
        # Each page's words as a memoryview of signed 64-bit integers: an item read or written through
        # it costs a quarter of numpy's (no scalar object), and most of a signal is such items.
        self.words = {p: page[:_WORDS_BYTES].cast("q") for p, page in pages.items()}
        self.pages = pages
        self.own = self.words[rank]
        self.wake = wake  # rank -> its eventfd (this rank's own included: the one it sleeps on)
        self.given = 0
        self.others = others  # every peer, from the next rank up (`ShmLink.others`)
        self._page = pages[rank]
        self._call_fps: dict[tuple[str, str], int] = {}
        self._peers = [(self.words[p], wake[p]) for p in self.others]  # each peer's words and eventfd

    def announce(self, seq: int, header: wire.Header) -> None:
        """This rank's current collective: its number and header, for peers to check while they wait."""
        own, body = self.own, header.body
        n = len(body)
        if n > _HEADER_ROOM:  # kept for error messages only: a longer header is cut
            n = _HEADER_ROOM
            body = body[:n]
        self._page[HEADER_AT:HEADER_AT + n] = body
        own[HEADER_LEN] = n
        fields = header.fields
        key = (fields["op"], fields.get("path", "ring"))
        fp = self._call_fps.get(key)
        if fp is None:
            fp = self._call_fps[key] = call_fingerprint(*key)
        own[CALL_FP] = fp
        own[CALL] = seq + 1  # 0: none announced yet

    def publish(self, address: int, second: int = 0) -> None:
        """Where this rank's block (and a second one) lie in its memory, for its peers to read
        after the next signal."""
        own = self.own
        own[ADDRESS] = address
        own[ADDRESS_2] = second

    def published(self, p: int, which: int = ADDRESS) -> int:
        """Where rank p's block (`which`: ADDRESS_2, its second) lies in its memory (read after
        the signal that follows its `publish`)."""
        return self.words[p][which]

    def signal(self, g: Any, op: str, header: wire.Header, timeout: float | None) -> None:
        """Give this rank's next signal and return once every peer has given it, with the same header."""
        s = self.given
        self.given = target = s + 1
        fp = fingerprint(header.body)
        own = self.own
        slot = 1 + (s & 1)  # FP_EVEN or FP_ODD
        own[slot] = fp
        own[SIGNALS] = target
        fence()  # the count is seen before word 5 is read: a peer going to sleep now sees it
        peers = self._peers
        for w, fd in peers:
            if w[ASLEEP]:
                channel.ring_eventfd(fd)
        for w, _ in peers:
            if w[SIGNALS] < target or w[slot] != fp:
                break
        else:
            return  # every peer was there first: the common case on a rank that comes last
        try:
            self._wait(g, op, target, fp, timeout)
        except BaseException as exc:
            g._fail(op, g.channels, g._seq - 1, [], exc)
            raise

    def _wait(self, g: Any, op: str, target: int, fp: int, timeout: float | None) -> None:
        words = self.words
        pending = [p for p in self.others if words[p][SIGNALS] < target]
        settings = g.settings
        spin = settings.spin_us * 1e-6
        bg = engine.current()  # on a non-blocking operation's thread: its background moves while this waits
        bg_masks: dict[int, int] = {}
        if bg is not None:
            spin = 0.0  # as the engine: the progress thread leaves the cores to the compute it overlaps
        start = time.monotonic()
        limit = g._timeout(timeout)
        # Yielding the core, the spin counts this thread's own CPU time: while peers run on the
        # core it gave them, the wait costs nothing and they progress.
        clock = time.thread_time if settings.spin_yield else time.monotonic
        poller = None
        waiting: dict[int, Any] = {}
        nap = _SLICE_FIRST
        while True:
            if spin > 0:  # in pieces of at most _SPIN_PIECE, with the connections looked at between
                began, spun = clock(), time.monotonic()
                until = began + min(spin, _SPIN_PIECE)
                while pending and clock() < until:
                    if clock is time.thread_time:
                        os.sched_yield()
                    pending = [p for p in pending if words[p][SIGNALS] < target]
                spin -= clock() - began
                start += deadlines.stopped_for(spun, _SPIN_PIECE)
            pending = [p for p in pending if words[p][SIGNALS] < target]
            if not pending:
                break
            self._check_calls(g, op, pending, target)
            if poller is None:
                poller = select.poll()
                poller.register(self.wake[self.rank], select.POLLIN)
                for ch in g.channels:
                    if ch.closed:
                        continue
                    # Frames read ahead (a peer's header behind the last call's bytes) wake no
                    # poll: they are looked at now, as the socket's are when it is readable.
                    if ch.staged():
                        self._check_given(g, target, fp)
                        if self._look(g, ch, op, target):
                            continue
                    waiting[ch.fd] = ch
                    poller.register(ch.fd, select.POLLIN)
            wait = nap if spin <= 0 else 0.0
            if bg is not None:
                bg.tick()
                bg.pump()
                bg_masks = engine.sync_fds(poller, bg_masks, bg.masks())
                cap = bg.max_wait()
                if cap is not None:
                    wait = max(0.0, min(wait, cap))
            self.own[ASLEEP] = 1
            fence()  # word 5 is seen before the counts are read: a peer signalling now wakes this rank
            try:
                if all(words[p][SIGNALS] < target for p in pending):  # once more, now that peers may see word 5
                    began = time.monotonic()
                    ready = poller.poll(wait * 1000)
                    lost = deadlines.stopped_for(began, wait)  # the process was stopped meanwhile: not counted
                    if lost:
                        start += lost
                        if bg is not None:
                            bg.stopped(lost)
                    if wait:
                        nap = min(nap * 2, _SLICE_MOST)
                else:
                    ready = []
            finally:
                self.own[ASLEEP] = 0
            if bg is not None and len(ready) > 1:  # the progress thread's own first: a closing group or
                ready.sort(key=lambda e: e[0] not in bg_masks)  # exit ends the call before a peer's loss does
            for fd, ev in ready:
                if fd == self.wake[self.rank]:
                    channel.drain_eventfd(fd)
                    continue
                ch = waiting.get(fd)
                if ch is not None:
                    self._check_given(g, target, fp)  # a mismatch seen here, before a peer's ABORT for it
                    if self._look(g, ch, op, target):
                        poller.unregister(fd)  # a peer's next call waits there: not for this signal
                        del waiting[fd]
                elif bg is not None and fd in bg_masks:
                    bg.on_event(fd, ev)
            if time.monotonic() - start > limit:
                pending = [p for p in pending if words[p][SIGNALS] < target]
                if pending:
                    exc = RingTimeoutError(
                        f"rank {self.rank}: {wire.called_as(op)} made no progress for {limit:g} s: waiting for "
                        f"{', '.join(self._peer(g, p) for p in pending)} to signal through shared memory")
                    if len(pending) == 1:  # the peer it waited for (of several, none is named)
                        ch = self._channel(g, pending[0])
                        if ch is not None:
                            channel.about(ch, exc, op)
                        else:  # (no connection to it: past 8 ranks, links open on first use)
                            known(exc, peer=pending[0], address=channel.format_address(*g.addresses[pending[0]][0]))
                    known(exc, rank=g.rank(), group=g.gid, op=op)
                    raise engine.waited_for(exc, [g.world_ranks[p] for p in pending])
        self._check_given(g, target, fp)

    def _peer(self, g: Any, p: int) -> str:
        """Rank p as errors name it: with its address and the connection to it, where there is one."""
        ch = self._channel(g, p)
        return ch.describe() if ch is not None else f"rank {p} (group {g.gid!r})"

    @staticmethod
    def _channel(g: Any, p: int) -> Any:
        """A TCP connection of group `g` to rank p, if it has one."""
        links = g.links
        ch = links.peers.get(p) if links is not None else None
        return ch if ch is not None else next((c for c in g.channels if c.peer == p), None)

    def _check_given(self, g: Any, target: int, fp: int) -> None:
        """A peer that gave this signal with another header: MismatchError."""
        slot = 1 + ((target - 1) & 1)
        for p in self.others:
            w = self.words[p]
            if w[SIGNALS] >= target and w[slot] != fp:
                raise known(MismatchError(self._different(g, p, "made a different call at the same step")),
                            rank=g.rank(), group=g.gid, peer=p)

    def _look(self, g: Any, ch: Any, op: str, target: int) -> bool:
        """A TCP connection became readable while this rank waits: raise what it carries (an
        ABORT, a closed connection, the header of a call that does not use shared memory);
        True when it is the peer's next call (its header, or an ABORT of it), to be left for
        that call's reader, or a peer that gave this signal has closed its connection."""
        seq = g._seq - 1
        try:
            ch.fill_stage()
        except PeerLostError as exc:
            aborts.pending_abort([ch], op)
            if self.words[ch.peer][SIGNALS] >= target:
                return True  # a peer done with this call may leave (its next call reports the loss)
            g.why_lost(exc)
            raise
        aborts._raise_next_abort(ch, seq, op)
        reader = ch.reader
        if reader.end == reader.start:
            return False
        kind = reader.next_kind()
        if kind == wire.HEADER:
            if self.words[ch.peer][SIGNALS] >= target:
                return True
            raise known(MismatchError(self._different(g, ch.peer, "sent a call's header over TCP instead")),
                        rank=g.rank(), group=g.gid, peer=ch.peer)
        return kind == wire.ABORT  # for a later call (this one's was raised): left for that call

    def _check_calls(self, g: Any, op: str, pending: list[int], target: int) -> None:
        """A peer that announced this rank's call number with another op, or a later call,
        without giving this signal (read after its call: it gives a signal before it moves on)."""
        own, seq = self.own, g._seq - 1
        for p in pending:
            w = self.words[p]
            call = w[CALL] - 1
            if ((call == seq and w[CALL_FP] != own[CALL_FP]) or call > seq) and w[SIGNALS] < target:
                raise known(MismatchError(self._different(g, p, "announced a different call")),
                            rank=g.rank(), group=g.gid, peer=p)

    def _different(self, g: Any, p: int, how: str) -> str:
        """The mismatch's message: the TCP check's own (`flows.check_same`) where both calls'
        headers can be read, so it says the same things (both calls, or the setting that differs)."""
        mine, theirs = self._fields(self.rank), self._fields(p)
        if mine is not None and theirs is not None:
            try:
                check_same(mine, theirs, SimpleNamespace(me=self.rank, peer=p, group=g.gid,  # type: ignore[arg-type]
                                                         world_ranks=g.world_ranks))
            except MismatchError as exc:
                return str(exc)  # word for word what TCP's check says
        ranks = SimpleNamespace(peer=p, world_ranks=g.world_ranks)
        other, me = channel.peer_name(ranks), channel.peer_name(ranks, self.rank)
        return (f"{me} called {self._describe(self.rank, mine)} but {other} called "
                f"{self._describe(p, theirs)} ({how}; group {g.gid!r})")

    def _fields(self, p: int) -> dict[str, Any] | None:
        """Rank p's current call's header, as it announced it (None if unreadable)."""
        n = self.words[p][HEADER_LEN]
        try:
            return wire.check_header(msgpack.unpackb(bytes(self.pages[p][HEADER_AT:HEADER_AT + n]), raw=False))
        except (ValueError, TypeError, ProtocolError, msgpack.UnpackException):
            return None

    def _describe(self, p: int, fields: dict[str, Any] | None) -> str:
        return wire.describe_header(fields) if fields is not None else f"call #{self.words[p][CALL] - 1}"

    def close(self) -> None:
        for words in self.words.values():  # the views over the pages go before the pages
            try:
                words.release()
            except BufferError:  # something still exports from it: the collector releases it
                pass
        self.words.clear()
        self._peers.clear()
        self.own = None  # type: ignore[assignment]
        self._page = None  # type: ignore[assignment]
        for page in self.pages.values():
            try:
                page.release()
            except BufferError:
                pass
        self.pages.clear()
        for fd in self.wake.values():
            channel.close_quietly(fd)
        self.wake.clear()
