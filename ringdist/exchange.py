"""The direct path's exchange: one block to every rank and one from each, in few steps.

Small collectives are dominated by fixed costs, so the common case takes a short road:
one `sendmsg` per peer (header, DATA prefix and payload together), then each peer's
header and prefix are read into its channel's staging buffer and compared, as bytes,
with what this rank expects; the payload lands in place (straight into the output when
it is large). The wait spins for the configured time only. Anything else (a partial
send, a header that differs, an ABORT, a wait longer than the spin) hands the rest,
exactly where it stands, to the general engine in `transfer`, which checks, reports and
times out as for every collective.
"""

from __future__ import annotations

import os
import select
import time

from . import transfer, wire
from .channel import Channel, socket_error
from .errors import PeerLostError
from .transfer import Inflow, Outflow, Segments

STAGED_PAYLOAD_MAX = 16 * 1024  # up to this, a payload is read with its header into the stage and copied


class _Receive:
    """One peer's expected bytes: our header frame, a DATA prefix, then `dest`'s length of payload."""

    __slots__ = ("ch", "dest", "intro", "got", "need", "op")

    def __init__(self, ch: Channel, dest: memoryview, intro: bytes, op: str):
        self.ch = ch
        self.op = op
        self.dest = dest
        self.intro = intro  # header frame + DATA prefix, byte-identical on both sides when all is well
        self.got = -1  # payload bytes in place; -1: the intro is not yet taken
        self.need = len(dest)

    def step(self) -> bool | None:
        """Take what has arrived. True: complete; False: more to come; None: not the expected bytes."""
        ch = self.ch
        if self.got < 0:
            intro = self.intro
            have = ch.stage_end - ch.stage_start
            want = len(intro) + (self.need if self.need <= STAGED_PAYLOAD_MAX else 0)
            if have < want:
                try:
                    ch.fill_stage(want - have)
                except PeerLostError:
                    return None  # the general engine reports it, after any ABORT the peer sent first
                have = ch.stage_end - ch.stage_start
            start = ch.stage_start
            n = min(have, len(intro))
            if ch.stage_view[start:start + n] != intro[:n]:
                return None
            if n < len(intro):
                return False
            start += n
            take = min(self.need, ch.stage_end - start)
            self.dest[:take] = ch.stage_view[start:start + take]
            ch.stage_start = start + take
            self.got = take
        while self.got < self.need:
            k = ch.recv_into(self.dest[self.got:], self.op)
            if not k:
                return False
            self.got += k
        return True

    def inflow(self, op: str, header: wire.Header) -> Inflow:
        """The general engine's inflow for the rest of this stream."""
        flow = Inflow(self.ch, Segments([self.dest]), op, header)
        if self.got >= 0:  # the header and prefix are taken; the payload is part in place
            flow.resume(self.got)
        return flow


def exchange(peers: list[Channel], sends: list[memoryview], recvs: list[memoryview], header: wire.Header, *,
             outflows: list[Outflow], watched: list[Channel], timeout: float, op: str, me: int, seq: int,
             spin: float, yield_core: bool, poller: "select.poll") -> None:
    """Send `sends[i]` to `peers[i]` and receive `recvs[i]` from it, for every i.

    `poller` has every peer's fd registered for reading. Outflows that could not send
    everything at once are appended to `outflows` (a caller's abort must finish their frame).
    """
    intros: dict[int, bytes] = {}

    def intro(length: int) -> bytes:
        if length not in intros:
            intros[length] = header.frame + wire.encode_prefix(wire.DATA, length) if length else header.frame
        return intros[length]

    for ch, send in zip(peers, sends):
        first = intro(len(send))
        try:
            sent = ch.sock.sendmsg([first, send])
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ch.lost(socket_error(exc), op) from None
        if sent < len(first) + len(send):
            flow = Outflow(ch, Segments([send]), op, header)
            flow.skip(sent)
            outflows.append(flow)
    waiting = {}
    odd = []
    for ch, dest in zip(peers, recvs):
        r = _Receive(ch, dest, intro(len(dest)), op)
        if ch.stage_end > ch.stage_start:  # read ahead earlier: take it first
            state = r.step()
            if state is None:
                odd.append(r)
                continue
            if state:
                continue
        waiting[ch.fd] = r
    if waiting and not outflows and not odd:
        deadline = time.perf_counter() + min(spin, timeout)  # never spinning past the timeout
        while True:
            events = poller.poll(0)
            for fd, _ in events:
                r = waiting.get(fd)
                if r is None:
                    continue
                state = r.step()
                if state is None:
                    odd.append(waiting.pop(fd))
                elif state:
                    del waiting[fd]
            if not waiting or odd or time.perf_counter() >= deadline:
                break
            if yield_core:
                os.sched_yield()
    if waiting or odd or outflows:
        inflows = [r.inflow(op, header) for r in list(waiting.values()) + odd]
        transfer.run(inflows, outflows, watched, timeout=timeout, op=op, me=me, seq=seq, header=header)
