"""The engine: one poll loop that drives a collective's flows, and its short road.

`run` drives every `Inflow` and `Outflow` (`flows`) of an operation to completion over
non-blocking channels. The loop blocks in `poll` (no spinning unless asked) and its
timeout is progress-based: it resets whenever a byte moves, and while a send buffer is
full, whenever the peer acknowledges bytes of it (the kernel's count of unacknowledged
bytes going down: a slow link drains a full buffer for longer than a timeout with no
write getting through). Channels without an inflow are watched for an ABORT or a header
of another call.

`exchange` is the direct path's way in: one block to every peer and one from each.
Small collectives are dominated by fixed costs, so it first tries to finish the flows
at once: one `sendmsg` per peer (header, DATA prefix and payload together), then each
peer's header and prefix are compared, as bytes, with what this rank expects, and the
payload lands in place. The wait spins for the configured time only. Whatever is not
finished then (a partial send, a header that differs, an ABORT, a wait longer than the
spin) goes to `run` in the same flows, exactly where it stands, which checks, reports
and times out as for every collective.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, Callable

from . import deadlines, forks, wire
from .channel import Channel, about, peer_name, unsent_bytes, world_of
from .errors import RingError, RingTimeoutError
from .flows import MAX_FRAME, Inflow, Outflow, Segments, Watch, intro

perf_counter = time.perf_counter
POLLIN = select.POLLIN | select.POLLPRI
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR | select.POLLHUP | select.POLLNVAL

# Each non-blocking thread's background (`work`: the progress thread's send/recv flows; a
# group's runner's wake-up, `runners`), by thread ident, driven by every wait on that thread:
# its fds join the poll set, it is pumped and read, never waited for. Empty until a first async op.
backgrounds: dict[int, Any] = {}
forks.in_child(backgrounds.clear)  # (the parent's threads: none of them is in a forked child)


def set_background(bg: Any, owner: int) -> None:
    """Install (or, with None, remove) thread `owner`'s background: an object with `masks()`,
    `pump()`, `on_event(fd, ev)` (which may raise into the wait: a closing group), `tick()`,
    `max_wait()` (seconds a poll may block, or None) and `stopped(seconds)` (the process was
    stopped that long: not counted against its timeouts, `deadlines.stopped_for`)."""
    if bg is None:
        backgrounds.pop(owner, None)
    else:
        backgrounds[owner] = bg


def current() -> Any:
    """This thread's background, or None (a caller's thread)."""
    return backgrounds.get(threading.get_ident()) if backgrounds else None


def poll_background() -> None:
    """Drive this thread's background once without waiting, from a wait outside `run` (a link's,
    for a runner's collective: a closing group's interrupt is raised here too)."""
    bg = current()
    if bg is None:
        return
    poller = select.poll()
    for fd, mask in bg.masks().items():
        poller.register(fd, mask)
    bg.pump()
    for fd, ev in poller.poll(0):
        bg.on_event(fd, ev)
    bg.tick()


def run(inflows: list[Inflow], outflows: list[Outflow], watched: list[Channel], *,
        timeout: float, op: str, me: int, seq: int | None = None, spin: float = 0.0,
        yield_core: bool = False, idle: Callable[[], bool] | None = None,
        header: wire.Header | None = None) -> None:
    """Drive every flow to completion, or raise (RingTimeoutError after `timeout` s without progress).

    Channels in `watched` without a pending inflow are watched for an ABORT, and for a
    HEADER of call `seq` other than `header` (MismatchError). Waits block
    in poll; with `spin` > 0 each wait first polls without blocking for up to `spin`
    seconds (tens of microseconds), which small messages finish within. With `yield_core`
    the spin gives the core away between polls (sched_yield): on a host with more ranks
    than cores, the peer being waited for may need this very core. `idle` is work to do
    instead of waiting, a piece per call; it returns False once there is none left.
    """
    bg = backgrounds.get(threading.get_ident()) if backgrounds else None
    if bg is not None:
        spin = 0.0  # a non-blocking operation's thread leaves the cores to the compute it overlaps
        bg_masks: dict[int, int] = {}
    # fd -> [inflow or None, outflow or None, Watch or None]
    slots: dict[int, list[Any]] = {ch.fd: [None, None, Watch(ch, op, seq, header)] for ch in watched}
    for flow in inflows:
        slots.setdefault(flow.ch.fd, [None, None, None])[0] = flow
        flow.consume_staged()
    for reader, _, watch in slots.values():
        if watch is not None and reader is None and watch.ch.reader.end != watch.ch.reader.start:
            watch.scan()  # frames read ahead earlier wake no poll
    for flow in outflows:
        slots.setdefault(flow.ch.fd, [None, None, None])[1] = flow
    poller = select.poll()
    masks: dict[int, int] = {}
    unsent: dict[int, int] = {}  # fd -> bytes its kernel had not yet seen acknowledged, when last looked
    last_progress = time.monotonic()
    while True:
        for flow in outflows:
            if not flow.done and not flow.blocked and flow.pump():
                last_progress = time.monotonic()
        if bg is not None:
            bg.tick()
            bg.pump()
            bg_masks = sync_fds(poller, bg_masks, bg.masks())
        busy = False
        for fd, (reader, writer, watch) in slots.items():
            mask = 0
            if reader is not None and not reader.done:
                mask = POLLIN
                busy = True
            elif watch is not None and not watch.done:
                mask = POLLIN  # the inflow is done (or there is none): listen for an ABORT
            if writer is not None and not writer.done:
                busy = True
                if writer.blocked:
                    mask |= POLLOUT
            if masks.get(fd, 0) != mask:
                if mask:
                    poller.register(fd, mask)
                else:
                    poller.unregister(fd)
                masks[fd] = mask
        if not busy:
            return
        events = poller.poll(0) if spin else None
        if not events and spin:  # never spinning past the timeout
            spun = time.monotonic()
            spin_until = time.perf_counter() + min(spin, max(0.0, last_progress + timeout - spun))
            while not events and time.perf_counter() < spin_until:
                if yield_core:
                    os.sched_yield()
                events = poller.poll(0)  # a short spin beats the kernel's wake-up latency
            last_progress += deadlines.stopped_for(spun, spin)  # (no background: it does not spin)
            # (A spin is at most milliseconds: a stop in it is all of what it took.)
        while idle is not None and not events:
            if not idle():
                idle = None
            events = poller.poll(0)
        if not events:
            wait = last_progress + timeout - time.monotonic()
            draining = [f for f in outflows if f.blocked and not f.done]
            if draining:  # a full send buffer may drain slowly, a slow link: look at it 4 times a timeout
                wait = min(wait, timeout / 4)
            if bg is not None:
                cap = bg.max_wait()
                if cap is not None and cap < wait:
                    wait = max(cap, 0.0)
            began, ms = time.monotonic(), deadlines.poll_ms(min(wait, deadlines.SLICE))
            events = poller.poll(ms) if ms else []
            lost = deadlines.stopped_for(began, ms / 1000)  # the process was stopped meanwhile: not counted
            if lost:
                last_progress += lost
                if bg is not None:
                    bg.stopped(lost)
            if not events:
                if draining and drained(draining, unsent):
                    last_progress = time.monotonic()  # the peer took bytes: a slow link, not a stall
                    continue
                if time.monotonic() - last_progress < timeout:
                    continue  # one slice of a long wait ended
                raise stall_error(inflows, outflows, op, me, timeout)
        moved = 0
        for fd, ev in events:
            entry = slots.get(fd)
            if entry is None:
                bg.on_event(fd, ev)
                continue
            reader, writer, watch = entry
            if ev & (POLLIN | POLLERR):
                if reader is not None and not reader.done:
                    moved += reader.on_readable()
                elif watch is not None and not watch.done:
                    try:
                        watch.on_readable()
                    except RingError:
                        for flow in inflows:  # what this rank can see for itself wins over a relayed ABORT
                            if not flow.done:
                                flow.on_readable()
                        raise
            if ev & (POLLOUT | POLLERR) and writer is not None:
                writer.blocked = False
        if moved:
            last_progress = time.monotonic()


def drained(flows: list[Outflow], unsent: dict[int, int]) -> bool:
    """Whether the peer of a blocked outflow acknowledged bytes since the last look (its socket's
    unsent bytes went down: a slow link still moving, which no write sees while the buffer is
    full); the first look only notes them."""
    moved = False
    for f in flows:
        now = unsent_bytes(f.ch.sock)
        if now is None:
            continue
        before = unsent.get(f.ch.fd)
        unsent[f.ch.fd] = now
        moved = moved or (before is not None and now < before)
    return moved


def on_progress_thread() -> bool:
    """Whether this thread runs non-blocking operations (the progress thread, a group's runner)."""
    return current() is not None


def sync_fds(poller: "select.poll", old: dict[int, int], new: dict[int, int]) -> dict[int, int]:
    """Bring the fds registered in `poller` from `old` to `new` (fd -> mask); returns `new`."""
    for fd in old:
        if fd not in new:
            poller.unregister(fd)
    for fd, mask in new.items():
        if old.get(fd) != mask:
            poller.register(fd, mask)
    return new


def _progress(f: Inflow) -> str:
    """How far an inflow got: '10 of 64 bytes', with ', header not yet received' until it has;
    a header alone (a step that carries no data) is 'its header not yet received'."""
    if not f.total:
        return "its header not yet received" if f.need_header else "0 bytes"
    return f"{f.received} of {f.total} bytes{', header not yet received' if f.need_header else ''}"


def stall_error(inflows: list[Inflow], outflows: list[Outflow], op: str, me: int, timeout: float) -> RingTimeoutError:
    """The timeout of a call that made no progress for `timeout` seconds, naming what it waited
    for; the world ranks of those peers in `ringdist_waited_for` (`waited_for`)."""
    ins = [f for f in inflows if not f.done]
    outs = [f for f in outflows if not f.done and f.blocked]
    waits = [f"receiving from {f.ch.describe()} ({_progress(f)})" for f in ins]
    waits += [f"sending to {f.ch.describe()} ({f.framed} of {f.total} bytes framed)" for f in outs]
    detail = "; ".join(waits) or "waiting"
    named = peer_name((ins + outs)[0].ch, me) if ins or outs else f"rank {me}"  # (with its world rank)
    exc = RingTimeoutError(f"{named}: {wire.called_as(op)} made no progress for {timeout:g} s: {detail}")
    peers = {f.ch.peer: f.ch for f in ins + outs}
    if len(peers) == 1:  # the peer it waited for (of several, none is named)
        about(next(iter(peers.values())), exc, op)
    return waited_for(exc, [world_of(f.ch) for f in ins + outs])


def waited_for(exc: RingTimeoutError, ranks: list[int]) -> RingTimeoutError:
    """`exc`, a timeout waiting for peers, with their world ranks (`ringdist_waited_for`): the
    failure this rank tells the launcher names them, for its summary to name a rank that stalled."""
    exc.ringdist_waited_for = tuple(sorted(set(ranks)))  # type: ignore[attr-defined]
    return exc



def exchange(peers: list[Channel], sends: list[memoryview], recvs: list[memoryview], header: wire.Header,
             outflows: list[Outflow], watched: list[Channel], timeout: float, op: str, me: int, seq: int,
             spin: float, yield_core: bool, poller: "select.poll", sources: list[Channel] | None = None,
             expect: wire.Header | None = None) -> bool:
    """Send `sends[i]` to `peers[i]` and receive `recvs[i]` from it (from `sources[i]` if
    given: a shift, sending one way and receiving from the other), for every i. `sends` or
    `recvs` may be empty: a message one way only. Received streams start with `expect`
    (default: `header`, what this rank sends), compared as bytes.

    `poller` has every peer's fd registered for reading. Outflows that could not send
    everything at once are appended to `outflows` (a caller's abort must finish their frame).
    True when each channel received on found its socket empty at its last read, or has the
    peer's next header staged: nothing (no ABORT) had come after the call's frames then.
    """
    last, first = -1, b""  # the intro of the last length seen: blocks are mostly of one length
    for ch, send in zip(peers, sends):
        n = len(send)
        if n > MAX_FRAME:  # a large block: in frames of MAX_FRAME, as every outflow cuts them (the poll loop)
            outflows.append(Outflow(ch, Segments([send]), op, header))
            continue
        if n != last:
            first, last = intro(header, n), n
        sent = ch.sendmsg([first, send], op)
        if sent != len(first) + n:
            outflows.append(Outflow.rest_of(ch, send, op, first, sent))
    waiting = {}
    odd = []
    froms = peers if sources is None else sources
    if expect is None:
        expect = header
    else:
        last = -1
    for ch, dest in zip(froms, recvs):
        n = len(dest)
        flow = Inflow(ch, Segments([dest]), op, expect)
        ch.drained = False  # until a read of this call finds the socket empty
        if n > MAX_FRAME:  # several frames (above): the poll loop reads them
            odd.append(flow)
            continue
        if n != last:
            first, last = intro(expect, n), n
        if ch.reader.end != ch.reader.start:  # read ahead earlier: take it first
            state = flow.take(first)
            if state is None:
                odd.append(flow)
                continue
            if state:
                continue
        waiting[ch.fd] = (flow, first)
    if backgrounds and threading.get_ident() in backgrounds:
        spin = 0.0  # a non-blocking operation's thread: straight to run, which drives its background too
    if waiting and not outflows and not odd:
        deadline = perf_counter() + min(spin, timeout)  # never spinning past the timeout
        while True:
            for fd, _ in poller.poll(0):
                entry = waiting.get(fd)
                if entry is None:
                    continue
                state = entry[0].take(entry[1])
                if state is None:
                    odd.append(waiting.pop(fd)[0])
                elif state:
                    del waiting[fd]
            if not waiting or odd or perf_counter() >= deadline:
                break
            if yield_core:
                os.sched_yield()
    if waiting or odd or outflows:
        inflows = [flow for flow, _ in waiting.values()] + odd
        run(inflows, outflows, watched, timeout=timeout, op=op, me=me, seq=seq, header=expect)
    for ch, _ in zip(froms, recvs):
        if not ch.drained:
            # Read past the call's frames: clean too if a header (the peer's next call) is
            # next, for an ABORT of this call could only have come before it.
            reader = ch.reader
            if reader.end == reader.start or reader.next_kind() != wire.HEADER:
                return False
    return True
