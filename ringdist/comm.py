"""A communicator: rank, size, the links to its peers, call numbering, and the broken state.

A `Comm` knows how to run flows over its connections and what to do when that fails
(mark itself broken, tell every peer with an ABORT); it knows no collective. The
algorithms build the flows (`algorithms/`), the tuning table chooses among them
(`tuning`), and the public `Group` adds `split` on top (`group`, `split`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import ipaddress
import numbers
import os
import select
import threading
import time
import weakref
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from . import aborts, deadlines, engine, forks, wire
from .flows import Inflow, Outflow, Watch
from .channel import Channel, about
from .asking import ASK_AFTER, Asker
from .endpoint import ASK_LINK, ASK_MESSAGE, Endpoint, InboxKey
from .errors import (ConfigError, ConnectError, GroupBrokenError, MismatchError, PeerLostError, RingError,
                     RingTimeoutError, known)
from .hosts import Hierarchy, hierarchical, layout
from .links import Links
from .mesh import MAX_RANKS as MESH_MAX_RANKS, MeshLinks
from .ring import RingLinks
from .settings import Settings
from .shm import ShmLink, open_link
from .shmsignal import Signals
from .tags import Held

HEADER_TEMPLATES = 256  # kinds of call whose header bytes a group keeps
# Waits receiving (or, only sending, sending) more than this never spin: they wait on bandwidth, and a
# spin would take CPU time the kernel's copies need (a 2-rank 64 MiB all_gather ran 1.6x slower spinning 2 ms).
SPIN_MAX_BYTES = 4 << 20
# Seconds between looks, by a receive waiting for its pair's turn, for a message the turn's
# holder read ahead and kept for it (`tags`).
HELD_LOOK = 0.002
_open_groups: "weakref.WeakSet[Comm]" = weakref.WeakSet()
_default: "Callable[[], Comm] | None" = None  # makes the world group (set by `world`)


def several_links(addresses: list[list[tuple[str, int]]]) -> bool:
    """Whether large blocks should go both ways round the ring, from the addresses the ranks
    listen on: when they are on several hosts and some host has several addresses (a cable
    to each neighbour, say), each direction of a link carries its own bytes. With one address
    per host (one NIC, a switch) both directions leave by the same NIC: no more bandwidth,
    and two flows per NIC instead of one. On one host there are only memory copies, which a
    second stream per neighbour made 5-15% slower at 64 MiB."""
    return not one_host(addresses) and any(len(listens) > 1 for listens in addresses)


def one_host(addresses: list[list[tuple[str, int]]]) -> bool:
    """Whether the ranks listening on these addresses are all on one host: every address
    is a loopback one, or all are the same one."""
    ips = {ip for listens in addresses for ip, _ in listens}
    if len(ips) <= 1:
        return True
    try:
        return all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in ips)
    except ValueError:  # a name, not an address
        return False


def set_default(factory: "Callable[[], Comm]") -> None:
    """Who makes the default communicator (`group=None`): `world.init`."""
    global _default
    _default = factory


def default() -> "Comm":
    """The default communicator: the world group, made on first use (`world` loaded first where
    only a submodule was imported: `from ringdist.collectives import all_sum`)."""
    if _default is None:
        importlib.import_module("ringdist.world")
    assert _default is not None, "ringdist.world sets the default communicator"
    return _default()


default_made: "Comm | None" = None  # the default communicator once made (read on every call with group=None)


def set_default_made(comm: "Comm | None") -> None:
    global default_made
    default_made = comm


def thread_name(t: threading.Thread | None) -> str:
    """A thread as errors name it: the thread that issued a non-blocking call its group's runner
    runs (`runners`), not the runner."""
    if t is None:
        return "'?'"
    issuer = getattr(t, "ringdist_issuer", None)
    return repr(t.name) if issuer is None else f"{issuer.name!r} (its call run by {t.name!r})"


class Comm:
    """A set of ranks that run collectives together; `rank()` and `size()` as in MLX.

    Every collective on a communicator must be called by all its ranks, in the same order.
    Use `close()` (or `with`) to release its connections; open ones close at exit.
    """

    def __init__(self, *, gid: str, rank: int, size: int, endpoint: Endpoint | None,
                 settings: Settings, addresses: list[list[tuple[str, int]]],
                 world_ranks: list[int], object_caps: "list[int | None] | None" = None):
        self.gid = gid
        self._rank = rank
        self._size = size
        self._endpoint = endpoint
        self.settings = settings
        self._addresses = addresses  # per group rank: the (ip, port) list it listens on
        self._world_ranks = world_ranks  # per group rank: its rank in the world
        # per group rank: its RINGDIST_MAX_OBJECT_BYTES, where the rendezvous's table said it
        self.object_caps: "list[int | None]" = object_caps or [None] * size
        self._seq = 0
        self._header: wire.Header | None = None  # the last collective's (checked on watched channels)
        self._channels: list[Channel] | None = None
        self._headers: dict[tuple, wire.HeaderTemplate] = {}  # per kind of call: its header's fixed bytes
        self._splits = 0
        self._broken: str | None = None
        # The ABORT of the failure that broke the group, set before `_broken` is: a send that
        # finds the group broken puts it on its connection (`_refuse_message`). `mark_broken`'s
        # stands until `_fail` makes the one it tells its peers.
        self._abort_frame: bytes | None = None
        self._abort_told = False
        self._closed = False
        self._lock = threading.Lock()
        self._caller: dict[int, threading.Thread] = {}  # 0 -> the thread in this group's current collective
        self._intruder: tuple[int, str] | None = None  # (call, why): another thread's call refused during it
        # A failure another thread had while this group's collective held its connections: that
        # collective tells the peers once its frames are out (`_fail`, `finish`).
        self._untold: list[BaseException] = []
        self.told_peers = False  # an ABORT went on the group's connections (`_fail`, `_tell_untold`)
        self.ring: RingLinks | None = None
        self.mesh: MeshLinks | None = None  # links to every rank, for the direct path (2..8 ranks)
        self.links: Links | None = None  # links to peers, opened on first use (the mesh where there is one)
        self.shm: ShmLink | None = None  # shared memory with every rank (all on this machine; `shm`)
        self._signals: Signals | None = None  # its signals through shared memory (`shmsignal`), if any
        self.hierarchy: Hierarchy | None = None  # ranks on several hosts, as many on each (`hosts`)
        # Every rank sees the same addresses, so every rank makes the same choice.
        self.both_ways = settings.directions == 2 or (settings.directions == 0 and several_links(addresses))
        self.direct_max_override = settings.direct_max  # RINGDIST_DIRECT_MAX (None: the tuning table's)
        self.choices: dict[tuple, Any] = {}  # the tuning table's answers for this communicator (`tuning.choose`)
        self.plans: dict[str, Any] = {}  # an algorithm's own per-communicator precomputation, by its name
        self._peers_polled: tuple[list[Channel], Any] | None = None  # see finish()
        self._quiet = -1  # a call whose exchanges found their peers' sockets empty after its frames
        self._loud = -1  # a call with an exchange (or a run) that did not: see finish()
        self._p2p_out: dict[int, list] = {}  # peer -> [Channel, messages sent]
        # The message connections this rank sends on, by fd: what comes back on one is an ABORT
        # (or its close), looked for before every message (`_check_told`), in one poll.
        self._outs_poll = select.poll()
        self._outs: dict[int, tuple[int, Channel]] = {}
        self._outs_lock = threading.Lock()  # the poll, and its fds (one thread at a time may poll it)
        self._p2p_in: dict[int, list] = {}  # peer -> [Channel, messages received]
        self._p2p_turns: dict[tuple[int, bool], threading.Lock] = {}  # (peer, outgoing) -> its message's turn
        self._p2p_holders: dict[tuple[int, bool], threading.Thread] = {}  # the thread that took each turn last
        self.any_source_next = 0  # the rank an any-source receive looks at first (`any_source`)
        self.held = Held()  # messages read ahead of their receive, per sender (`tags`)
        self.closed_note = ""  # what "group ... is closed" adds (the world's, once ringdist's exit hook ran)
        self.mailbox: Any = None  # messages to this rank itself, and receives waiting for them (`own_messages`)
        self._in_poller: Any = None  # a poll of the arrived connections from senders (`p2p_arrivals`)
        self._in_polled: dict[int, int] = {}  # fd -> sender, of those it polls
        self._in_unpolled: set[int] = set()  # senders whose connection closed between messages
        self._in_lock = threading.Lock()  # guards the three above
        if size > 1:
            assert endpoint is not None
            endpoint.note_group(gid)  # what its peers filed here before it was made is its own
            ring = RingLinks(gid, rank, size, world_ranks)
            try:
                ring.connect(endpoint, addresses, settings.lanes, settings.connect_timeout, self._asking)
            except BaseException as exc:
                self._setup_failed(exc, ring.channels)
                ring.close()
                endpoint.discard(gid)  # what its peers filed here for it, and will (ids are not reused)
                raise
            self.ring = ring
            try:  # whatever this rank's settings: its peers expect the links and its vote
                if size <= MESH_MAX_RANKS:
                    self.links = self.mesh = MeshLinks(endpoint, self.ring, addresses)
                    self.mesh.open(settings.connect_timeout, self._asking)
                else:
                    self.links = Links(endpoint, self.ring, addresses)
                self.shm = open_link(endpoint, self.links, group=gid, rank=rank, size=size,
                                     addresses=addresses, wanted=settings.shm, timeout=settings.connect_timeout,
                                     signals=settings.shm_signals, cross=settings.shm_cma)
                if self.shm is not None:
                    self._signals = self.shm.signals
                else:
                    hosts = layout(addresses)
                    if hierarchical(hosts):
                        self.hierarchy = Hierarchy.of(hosts, rank, None)
                        self.hierarchy.link = self._host_link()
            except BaseException as exc:
                self._setup_failed(exc, self.ring.channels + (self.links.own if self.links is not None else []))
                if self.shm is not None:
                    self.shm.close()
                if self.links is not None:
                    self.links.close()
                self.ring.close()
                endpoint.discard(gid)  # what its peers filed here for it, and will (ids are not reused)
                raise
        _open_groups.add(self)
        # A group dropped without close() releases what it holds when it is collected (its
        # connections, eventfds and shared memory; its peers see its connections close).
        self._parts = {"shm": self.shm, "hierarchy": self.hierarchy, "links": self.links, "ring": self.ring}
        self._finalizer = weakref.finalize(self, _release_parts, self._parts, self._p2p_out, self._p2p_in,
                                           endpoint, gid, self._rank)
        self._finalizer.atexit = False  # at exit `world.shutdown` closes the control connection first, then groups
        if endpoint is not None:  # a group of one process has no connections: it works in a child too
            forks.track(self)

    @contextlib.contextmanager
    def _asking(self, p: int) -> Iterator[Callable[[], None]]:
        """While this rank waits, making the group, for rank `p` to connect: a check that asks `p`
        whether the group failed there (`asking`; a rank that gave up tells no connection it never
        made) and raises its ABORT; the wait names `p` otherwise, where `p` may have given up on
        another rank, the one to name."""
        asker = self.asker(p, ASK_LINK)

        def check() -> None:
            told = asker.look()
            if told is not None and aborts.concerns(told, -1):
                aborts.raise_remote(told, SimpleNamespace(me=self._rank, peer=p, world_ranks=self._world_ranks),
                                    f"setup of group {self.gid!r}")  # type: ignore[arg-type]

        try:
            yield check
        finally:
            asker.close()

    def _setup_failed(self, exc: BaseException, channels: list[Channel]) -> None:
        """The group could not be made here (`exc`: a peer that never connected, a lost one, an
        interruption): its peers are told why, as a collective's failure is, not left to find its
        connections closed and blame this rank. An ABORT for the setup (call -1) on the links made
        so far, and (`Endpoint.note_aborted`) on those peers dialed that wait untaken, those that
        come later and asks; the launcher hears it with this rank's departure."""
        assert self._endpoint is not None
        if isinstance(exc, RingError):
            exc.op = None  # the user's call is this setup, whichever step of it failed
        known(exc, rank=self._rank, group=self.gid, op="init" if self.gid == "world" else "split")
        frame = wire.encode_map(wire.ABORT, aborts.abort_fields(exc, self._rank, -1))
        budget = deadlines.after(aborts.ABORT_BUDGET)
        for ch in channels:
            aborts.tell(ch, frame, budget)
        self._endpoint.note_aborted(self.gid, frame, self._why(exc), messages=True, waited=_waited(exc))

    def _host_link(self) -> ShmLink | None:
        """The shared-memory link among this rank's host's ranks (None: they use TCP): made as
        that host's own group is, whose TCP connections then close; its ranks alone agree on it."""
        h = self.hierarchy
        assert h is not None
        ranks = h.hosts[h.host]
        host = Comm(gid=f"{self.gid}/host{h.host}", rank=h.local, size=len(ranks), endpoint=self._endpoint,
                    # the hierarchy's host steps signal over the group's TCP connections: no eventfds
                    settings=dataclasses.replace(self.settings, shm_signals=False),
                    addresses=[self._addresses[p] for p in ranks],
                    world_ranks=[self._world_ranks[p] for p in ranks],
                    object_caps=[self.object_caps[p] for p in ranks])
        link, host.shm, host._parts["shm"] = host.shm, None, None  # kept: only its TCP connections close
        host.close()
        return link

    def rank(self) -> int:
        """This process's rank in the group."""
        return self._rank

    def size(self) -> int:
        """Number of ranks in the group."""
        return self._size

    @property
    def endpoint(self) -> Endpoint | None:
        """This process's endpoint (None in a group of one)."""
        return self._endpoint

    @property
    def addresses(self) -> list[list[tuple[str, int]]]:
        """Per rank of the group: the (ip, port) list it listens on."""
        return self._addresses

    @property
    def world_ranks(self) -> list[int]:
        """Per rank of the group: its rank in the world."""
        return self._world_ranks

    def next_split(self) -> int:
        """Number this communicator's next split (every rank numbers its splits alike)."""
        self._splits += 1
        return self._splits - 1

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else "open")
        return f"<ringdist.Group {self.gid!r} rank {self._rank} of {self._size} ({state})>"

    def __enter__(self) -> "Comm":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- running collectives -----------------------------------------------------------------

    @property
    def channels(self) -> list[Channel]:
        """Every connection of the group's collectives (watched for an ABORT during each one)."""
        assert self.ring is not None
        if self._channels is None:
            self._channels = self.ring.channels + (self.links.own if self.links is not None else [])
        return self._channels

    def link(self, p: int, timeout: float | None = None) -> Channel:
        """The channel to rank p, opened now if this is the pair's first use of it (`links`): the
        lower rank dials, the higher waits for it, within the collective's timeout and watching
        the group's connections meanwhile for an ABORT, or a header of the collective whose
        header was made last that describes another call (MismatchError)."""
        links = self.links
        assert links is not None
        ch = links.peers.get(p)
        if ch is not None:
            return ch
        seq, op = self._seq - 1, self._header.fields["op"] if self._header else "link"
        watches = {c.fd: Watch(c, op, seq, self._header) for c in self.channels}
        for watch in watches.values():
            if watch.ch.reader.end != watch.ch.reader.start:
                watch.scan()  # frames read ahead earlier (an ABORT behind a peer's last frame) wake no poll

        # Waiting for a lower rank to dial: has it failed? (It told the peers it is linked to,
        # who may have finished the call since and not passed it on.)
        asker = self.asker(p, ASK_LINK) if p < self._rank else None

        def check() -> None:
            for fd, _ in links.poller.poll(0):
                watch = watches.get(fd)
                if watch is not None and not watch.done:
                    watch.on_readable()
            engine.poll_background()  # on a group's runner: the group closing, or the process exiting
            told = asker.look() if asker is not None else None
            if told is not None and aborts.concerns(told, seq):
                aborts.raise_remote(told, SimpleNamespace(me=self._rank, peer=p, world_ranks=self._world_ranks), op)  # type: ignore[arg-type]

        try:
            ch = links.link(p, deadlines.after(self.settings.connect_timeout),
                            deadlines.after(self._timeout(timeout)), check)
        finally:
            if asker is not None:
                asker.close()
        self._channels = None  # watch it from now on
        self._peers_polled = None
        return ch

    def next_header(self, op: str, arr: np.ndarray, path: str = "ring", **extra: Any) -> wire.Header:
        """Check the group is usable and make the header of this rank's next collective, run
        by the algorithm named `path`: it rides in the header (the ring's implicitly), so
        ranks that chose differently fail with MismatchError, never hang."""
        if self._closed or self._broken:
            self.check_usable(op)
        key = (op, arr.dtype, arr.shape, path, self.both_ways, *extra.items()) if extra else \
            (op, arr.dtype, arr.shape, path, self.both_ways)
        template = self._headers.get(key)
        if template is None:  # before a number is taken: a header too long (ValueError) is refused (`refuse`)
            template = self._template(key, op, arr, path, extra)
        me = threading.current_thread()  # a thread the threading module did not start gets a stand-in
        if self._caller.setdefault(0, me) is not me and self._in_call():  # setdefault: atomic under the GIL
            self._refuse_thread(op, me)
        self._caller[0] = me
        seq = self._seq
        self._seq = seq + 1
        self._header = header = template.make(seq)
        if self._signals is not None:
            self._signals.announce(seq, header)
        return header

    def _in_call(self) -> threading.Thread | None:
        """The thread in this group's current collective, if there is one (a thread that has
        ended is in none: it left a call that raised past `finish` and `_fail`)."""
        owner = self._caller.get(0)
        return owner if owner is not None and owner.is_alive() else None

    def _refuse_thread(self, op: str, me: threading.Thread) -> None:
        """A collective from thread `me` while another thread's collective on this group runs.

        This rank can no longer say in which order it made the two calls, so its peers may pair
        them differently, and data would go to the wrong call. The call is refused here before it
        takes a number or touches a connection; the running call, which owns the connections,
        then fails when it ends (`finish`), breaking the group and telling the peers."""
        if self._broken:  # the holder is telling the peers of a failure: the group is broken already
            self.check_usable(op)
        why = self._intrusion(op, me, self._caller.get(0))
        # For the call running now (number seq - 1): if it has ended meanwhile, nothing is failed.
        self._intruder = (self._seq - 1, why)
        exc = MismatchError(why)
        exc.ringdist_intrusion = True  # refused here alone: not for `refuse` to tell the peers
        raise self.named(exc, op)

    def _intrusion(self, op: str, me: threading.Thread, owner: threading.Thread | None) -> str:
        return (f"rank {self._rank}: {wire.called_as(op)} on group {self.gid!r} from thread {thread_name(me)} while "
                f"{self._running()} runs on it from thread {thread_name(owner)}: a group's collectives must come "
                f"from one thread at a time, in the same order on every rank (order them, or give each thread its "
                f"own group with split())")

    def _running(self) -> str:
        """The collective whose header was made last, as error messages name it."""
        return wire.describe_header(self._header.fields) if self._header is not None else "a collective"

    def peer_header(self, op: str, arr: np.ndarray, path: str = "ring", **extra: Any) -> wire.Header:
        """The header a peer makes for this rank's current call (the one whose header was made
        last) from these arguments: a rank in another role of the call (a scatter's non-root,
        which passes no array) sends it, so this rank can expect it byte for byte."""
        key = (op, arr.dtype, arr.shape, path, self.both_ways, *extra.items())
        template = self._headers.get(key) or self._template(key, op, arr, path, extra)
        return template.make(self._seq - 1)

    def _template(self, key: tuple, op: str, arr: np.ndarray, path: str, extra: dict[str, Any]) -> wire.HeaderTemplate:
        """A new kind of call's header template, kept under `key`."""
        if path != "ring":
            extra["path"] = path
        if not self.both_ways:
            extra["ways"] = 1  # in the header: ranks with different RINGDIST_DIRECTIONS fail, not hang
        try:
            tag = wire.header_dtype(op, arr.dtype)
        except ValueError as exc:
            raise ValueError(f"rank {self._rank}: {exc}") from None
        template = wire.HeaderTemplate(op, tag, arr.shape, **extra)
        if len(self._headers) >= HEADER_TEMPLATES:
            self._headers.clear()
        self._headers[key] = template
        return template

    def check_usable(self, op: str) -> None:
        """Refuse work on a closed group, or one whose earlier operation failed."""
        if self._closed:
            raise self.named(RingError(f"{self.rank_name}: group {self.gid!r} is closed{self.closed_note}"), op)
        if self._broken:
            raise self.named(GroupBrokenError(
                f"{self.rank_name}: group {self.gid!r} cannot run {wire.called_as(op)}: an earlier operation on it failed "
                f"({self._broken}); its ranks are no longer in step"), op)

    @property
    def rank_name(self) -> str:
        """This rank as errors name it: 'rank 0', with '(world rank 3)' in a sub-group where that differs."""
        world = self._world_ranks[self._rank] if self._world_ranks else self._rank
        return f"rank {self._rank}" if world == self._rank else f"rank {self._rank} (world rank {world})"

    def named(self, exc: BaseException, op: str | None) -> BaseException:
        """`exc`, an error of call `op` on this group, carrying this rank, the group and the call."""
        return known(exc, rank=self._rank, group=self.gid, op=op)

    def run(self, op: str, inflows: list[Inflow], outflows: list[Outflow],
            channels: list[Channel] | None = None, timeout: float | None = None,
            idle: Callable[[], bool] | None = None, header: wire.Header | None = None,
            spare: Callable[[BaseException], bool] | None = None, size: int | None = None) -> None:
        """Drive an operation's flows; on any failure tell the peers and mark the group broken.

        `channels` are the connections to watch for an ABORT: the ring's for a collective
        (the one whose header was made last), the pair's own for point-to-point. `header`
        is what a peer's other headers of this call may be (default: the call's). `spare(exc)`:
        whether failure `exc` ends the operation alone, the group unbroken (a receive that has
        read nothing of its message: `p2p.Receiving.spare`). `size`: the bytes the whole operation
        moves, for whether it may spin (`_spin`), where its inflows' do not say (a step of it, or
        a root that only sends).
        """
        seq: int | None = self._seq - 1
        self._loud = seq
        tell = None
        if channels is None:
            channels = self.channels
        else:
            seq = None
            # A failed message breaks the group: its collectives must fail everywhere. On a thread of
            # non-blocking operations the group's connections may be its runner's: `work` tells them.
            if self.ring is not None and not engine.on_progress_thread():
                tell = channels + self.channels
        watched = channels
        self._guarded(op, channels, seq, outflows, lambda: engine.run(
            inflows, outflows, watched, timeout=self._timeout(timeout), op=op, me=self._rank, seq=seq,
            spin=self._spin(size if size is not None else
                            sum(flow.total for flow in inflows) or sum(flow.total for flow in outflows)),
            yield_core=self.settings.spin_yield,
            idle=idle, header=None if seq is None else header or self._header), tell, spare)

    def exchange(self, op: str, sends: list[memoryview], recvs: list[memoryview], header: wire.Header,
                 timeout: float | None = None, peers: list[int] | None = None,
                 sources: list[int] | None = None, expect: wire.Header | None = None) -> None:
        """The direct path of the collective whose header was made last: `sends[i]` to rank
        `peers[i]` (default: `mesh.order`, every other rank), `recvs[i]` from rank `sources[i]`
        (default: `peers[i]`), each after the header `expect` (default: `header`, this rank's).
        Links not yet open are opened first (`link`)."""
        links = self.links
        assert links is not None
        seq = self._seq - 1
        outflows: list[Outflow] = []  # sends that did not complete at once
        channels = self._channels or self.channels
        try:  # as _guarded, written out: a lambda and a call cost 3-4 µs on the smallest collectives
            try:
                sources_ch = None
                if peers is None:
                    to = self.mesh.ordered  # type: ignore[union-attr]
                elif sources is None and len(peers) == 1:  # a pairwise step (doubling)
                    ch = links.peers.get(peers[0])
                    if ch is None:
                        ch = self.link(peers[0], timeout)
                        channels = self.channels  # with the link just opened
                    to = [ch]
                else:
                    to, sources_ch = self._linked(peers, sources, timeout)
                    channels = self.channels  # with any link just opened
                settings = self.settings
                quiet = engine.exchange(to, sends, recvs, header, outflows, channels,
                                        settings.timeout if timeout is None else self._timeout(timeout),
                                        op, self._rank, seq,
                                        settings.spin_us * 1e-6 if (sum(map(len, recvs)) or sum(map(len, sends)))
                                        <= SPIN_MAX_BYTES else 0.0,
                                        settings.spin_yield, links.poller, sources_ch, expect)
                # Every peer sent to was also read from, and read empty after its frames: as far
                # as this exchange goes, finish() need not poll.
                if quiet and (not sends or (sources is None and len(recvs) == len(sends))):
                    self._quiet = seq
                else:
                    self._loud = seq
            except PeerLostError as exc:
                aborts.pending_abort(channels, op)
                self.why_lost(exc)
                raise
        except BaseException as exc:
            self._fail(op, channels, seq, outflows, exc)
            raise

    def open_links(self, op: str, peers: list[int], timeout: float | None = None) -> list[Channel]:
        """The channels to `peers`, links not yet open opened first (`link`), for an algorithm
        that then drives its own flows (`run`); a failure meanwhile (an ABORT or another call
        seen while waiting for a link) breaks the group and is told to every peer, as within an
        exchange."""
        try:
            return self._linked(peers, None, timeout)[0]
        except BaseException as exc:
            self._fail(op, self.channels, self._seq - 1, [], exc)
            raise

    def _linked(self, peers: list[int], sources: list[int] | None,
                timeout: float | None) -> tuple[list[Channel], list[Channel] | None]:
        """The channels to `peers` and from `sources` (None: the same), links opened first."""
        known = self.links.peers  # type: ignore[union-attr]
        to = [known.get(p) or self.link(p, timeout) for p in peers]
        if sources is None:
            return to, None
        return to, [known.get(p) or self.link(p, timeout) for p in sources]

    def finish(self, op: str) -> None:
        """The collective whose header was made last has gone well here: raise the ABORT a
        peer already sent for it, if one has arrived (a peer that timed out before this rank
        came, or failed after sending its last frame of the call), and break the group.

        One poll of the channel to every peer linked so far (`links`); only a channel with
        bytes waiting has its next frame looked at. No poll when every exchange of the call
        read each peer it sent to empty after that peer's frames (`engine.exchange`): an
        ABORT sent before that read would have been read with them (and is staged), and one
        sent after it, by a peer that failed later on, races this check with a poll too."""
        seq = self._seq - 1
        if self._untold:  # another thread's failure during this call: its frames are out, the peers are told now
            self._tell_untold()  # while this thread still holds the connections
        self._caller.clear()
        if self._untold:  # one that came meanwhile, its thread seeing this call still running
            self._claim_untold()
        intruder = self._intruder
        if intruder is not None:  # another thread called during a call: see _refuse_thread
            self._intruder = None
            if intruder[0] == seq:  # during this one
                exc = MismatchError(intruder[1])
                self._fail(op, self.channels, seq, [], exc)
                raise exc
        if self._quiet == seq and self._loud != seq:
            assert self.links is not None
            for ch in self.links.peers.values():
                reader = ch.reader
                # A peer's next call (its header) may have been read with its last frames of
                # this one: an ABORT for this call could only have come before it.
                if reader.end != reader.start and reader.next_kind() != wire.HEADER:
                    break
            else:
                return
        polled = self._peers_polled
        if polled is None:
            if self.ring is None:
                return
            assert self.links is not None
            chans, poller = list(self.links.peers.values()), self.links.poller
            polled = self._peers_polled = (chans, poller)
        chans, poller = polled
        ready = poller.poll(0)
        if not ready:
            for ch in chans:
                if ch.reader.end != ch.reader.start:
                    break
            else:
                return  # the common case: nothing has come since the call's last frame
        try:
            aborts.abort_waiting(chans, ready, seq, op)
        except BaseException as exc:
            self._fail(op, self.channels, seq, [], exc)
            raise

    def _guarded(self, op: str, channels: list[Channel], seq: int | None, outflows: list[Outflow],
                 body: Any, tell: list[Channel] | None = None,
                 spare: Callable[[BaseException], bool] | None = None) -> None:
        """Run `body`; on any failure (but one `spare` spares: see `run`) mark the group broken
        and send an ABORT on `tell` (default: `channels`, the connections watched)."""
        try:
            try:
                body()
            except PeerLostError as exc:
                aborts.pending_abort(channels, op)  # the reason a peer left, if it sent one
                self.why_lost(exc)
                raise
        except BaseException as exc:
            if spare is None or not spare(exc):
                self._fail(op, channels if tell is None else tell, seq, outflows, exc)
            raise

    def why_lost(self, exc: PeerLostError) -> None:
        """A peer of this group closed its connection without an ABORT: its error ends with why
        that rank left the job, as the launcher tells it (its process ended; what it had raised),
        once this rank has heard, looked up as it is shown (`PeerLostError.__str__`). Its own
        error may be another group's, or its program's."""
        lost = getattr(exc, "ringdist_peer", None)
        endpoint = self._endpoint
        if lost is None or lost[0] != self.gid or endpoint is None or not 0 <= lost[1] < self._size:
            return
        addresses = self._addresses[lost[1]]
        exc.ringdist_why_left = lambda: endpoint.departed(addresses)  # type: ignore[attr-defined]

    def refuse(self, op: str, exc: BaseException) -> None:
        """This rank's `op` failed here outside the algorithm's own guard (`exc`: an argument that
        fails its checks, no memory for the result, an object that cannot be unpickled): it
        fails on every rank, not here alone while the peers wait out their timeout in the call.

        The group is marked broken and its peers get an ABORT for the call they are in: the
        number this call would have taken, or the one it took if it got that far. Nothing is
        told where the group has no peers, or is closed or broken already (its peers have
        heard). A call from another thread while one runs is refused as `_refuse_thread`
        says: the running call fails when it ends."""
        self.named(exc, op)
        if self.ring is None or self._closed or self._broken or isinstance(exc, ConfigError) or \
                getattr(exc, "ringdist_intrusion", False) or getattr(exc, "ringdist_everywhere", False):
            return  # a ConfigError (a forced algorithm that cannot run) is alike on every rank, as is an agreed failure
        owner, me = self._in_call(), threading.current_thread()
        if owner is not None and owner is not me:
            self._intruder = (self._seq - 1, self._intrusion(op, me, owner))
            return
        self._fail(op, self.channels, self._seq if owner is None else self._seq - 1, [], exc)

    def mark_broken(self, op: str, exc: BaseException) -> None:
        """Mark the group broken by `exc` (no call of it starts from now on) without telling anyone:
        for a thread other than the one whose collective owns the connections (`runners`)."""
        self.named(exc, op)
        if not self._broken:
            self._note_abort(exc, self._seq)
            self._broken = f"{wire.called_as(op)}: {type(exc).__name__}: {exc}"
            self._end_mailbox()

    def _note_abort(self, exc: BaseException, seq: int | None, told: bool = False) -> None:
        """Keep the ABORT of the failure breaking the group, before it is marked broken: the first
        one `_fail` tells its peers (`told`), else the first one marked."""
        if self._abort_frame is None or (told and not self._abort_told):
            self._abort_frame = wire.encode_map(wire.ABORT, aborts.abort_fields(exc, self._rank, seq))
            self._abort_told = told

    def _fail(self, op: str, channels: list[Channel], seq: int | None, outflows: list[Outflow],
              exc: BaseException) -> None:
        """Mark the group broken by `exc` and tell the peers (an ABORT on every channel).

        A collective's failure goes to every connection of the group's collectives, not only
        the call's: a peer linked to this rank but not in this step must read why before it
        sees this rank's connections close (past 8 ranks, where links open on first use, it
        saw the close first and told its own peers of a lost rank instead of the mismatch)."""
        self.named(exc, op)
        if self.ring is not None and not any(ch.role.startswith("p2p") for ch in channels):
            channels = channels + [ch for ch in self.channels if ch not in channels]
        me = threading.current_thread()
        held = self._caller.get(0)
        owner = self._caller.setdefault(0, me)  # the group's connections, unless a collective holds them
        if seq is None and held is not me:
            # A message's failure outside this rank's collectives: the group's collectives fail
            # from the next one this rank makes, on every rank (one it has finished, and a peer
            # may still be in, went well).
            seq = self._seq
        self._note_abort(exc, seq, told=True)
        self._broken = f"{wire.called_as(op)}: {type(exc).__name__}: {exc}"
        self._end_mailbox()
        if owner is not me and owner.is_alive():
            # Another thread's collective is writing on the group's connections: an ABORT now
            # could land inside one of its frames. This failure's own connections (a message's)
            # are told now, the rest by that collective once its frames are out.
            own = [ch for ch in channels if ch.role.startswith("p2p")]
            frame = aborts.abort(outflows, own, exc, self._rank, seq)
            self._tell_pairs(frame)
            if self._endpoint is not None:  # links that collective opens must still be made: no ABORT for them yet
                self._endpoint.note_failure(self._why(exc), _waited(exc))
            if len(own) < len(channels):
                self._untold.append(exc)
                self._claim_untold()  # it ended meanwhile: told here after all
        else:
            self._caller[0] = me  # a thread that ended in a call holds nothing
            self._untold.clear()  # this ABORT says it all
            frame = aborts.abort(outflows, channels, exc, self._rank, seq)
            self._tell_pairs(frame)
            self.told_peers = self.told_peers or any(not ch.role.startswith("p2p") for ch in channels)
            self._caller.clear()  # the call is over
            if self._endpoint is not None:  # a peer that connects to this group from now on hears it too
                self._endpoint.note_aborted(self.gid, frame, self._why(exc), waited=_waited(exc))

    def _tell_pairs(self, frame: bytes) -> None:
        """The ABORT `frame` on the message connections of the group's pairs, but where a
        message of the pair is under way in this rank's direction (its turn taken: an ABORT
        now would land inside its frames), one failed part-way (`Channel.cut`), or one told
        already (`Channel.aborted`: the failure's own, say). A peer waiting there for this
        rank's next message, or sending one, raises at once instead of waiting out its timeout;
        one whose next receive reads it raises then, after the messages sent before it. A
        receive waiting for a connection from this rank that has asked gets it on its ask."""
        budget = deadlines.after(aborts.ABORT_BUDGET)
        if self._endpoint is not None:  # receives waiting for a connection from this rank asked (`asking`)
            self._endpoint.answer_asks(self.gid, frame)
        arrived = self._endpoint.filed(self.gid, "p2p") if self._endpoint is not None else []
        for peer in arrived:  # a sender's connection not taken yet: it may be sending on it now
            if peer not in self._p2p_in and 0 <= peer < self._size and peer != self._rank:
                try:
                    turn = self.p2p_turn(peer, False, "abort", None, wait=False)  # (a receive waiting for it)
                except RingError:
                    break  # closed meanwhile: nothing more is told
                if turn is not None:
                    try:
                        self.p2p_incoming(peer, "abort")
                    except RingError:
                        pass  # (it left: nothing to tell)
                    finally:
                        turn.release()
        for outgoing, table in ((True, self._p2p_out), (False, self._p2p_in)):
            for peer, (ch, _) in list(table.items()):
                # Only this rank writes on its outgoing connection's stream: a message's turn
                # keeps others out; the incoming one carries nothing this way but ABORTs. A
                # message that failed part-way has released its turn but left its frame cut.
                turn = self._p2p_turns.get((peer, True)) if outgoing else None
                if turn is not None and not turn.acquire(False):
                    continue
                try:
                    aborts.tell(ch, frame, budget)
                finally:
                    if turn is not None:
                        turn.release()

    def _end_mailbox(self) -> None:
        """The group broke or closed: receives from this rank itself that wait (`own_messages`)
        fail with what every later call on it gets, and its messages to itself go."""
        box = self.mailbox
        if box is None:
            return

        def error() -> BaseException:
            try:
                self.check_usable("a receive from itself")
            except RingError as exc:
                return exc
            return RingError(f"{self.rank_name}: group {self.gid!r} ended")  # (not reached: broken or closed)

        box.end(error)

    def _why(self, exc: BaseException) -> str:
        """A failure as the rendezvous is told it (`Endpoint.note_failure`): one passed on to this
        rank says so ('... aborted by rank 1: ...'), for the launcher names the rank it came from."""
        origin = getattr(exc, "ringdist_origin", None)
        if origin is not None and origin[0] != self._rank:
            why = f"{type(exc).__name__}: {exc}"
        else:
            why = aborts.summary(exc, self._rank)
        if self.gid != "world":  # its ranks are the group's, not the world's the departure names
            why = f"(as rank {self._rank} of group {self.gid!r}) {why}"
        return why

    def _claim_untold(self) -> None:
        """Tell a failure left for this group's collective (`_untold`) if no collective holds the
        connections now; else the one that does tells it."""
        me = threading.current_thread()
        if self._caller.setdefault(0, me) is me:
            try:
                self._tell_untold()
            finally:
                self._caller.clear()

    def _tell_untold(self) -> None:
        """The ABORT of a failure another thread had while this group's collective held its
        connections (`_fail`), on those connections, now at a frame boundary (once)."""
        try:
            exc = self._untold.pop()
        except IndexError:  # told by the other thread meanwhile
            return
        self._untold.clear()
        frame = aborts.abort([], self.channels, exc, self._rank, self._seq)  # from the call after the one that held them
        self._tell_pairs(frame)
        self.told_peers = True
        if self._endpoint is not None:  # a peer that connects to this group from now on hears it too
            self._endpoint.note_aborted(self.gid, frame, self._why(exc), waited=_waited(exc))

    def _spin(self, receiving: int) -> float:
        """Seconds a wait may spin, for one receiving this many bytes (one that only sends: sending):
        only waits up to SPIN_MAX_BYTES spin; a large one would spin away the kernel's copies' CPU time."""
        if receiving > SPIN_MAX_BYTES:
            return 0.0
        return self.settings.spin_us * 1e-6

    # ---- point-to-point connections ----------------------------------------------------------

    def check_peer(self, peer: Any, op: str, role: str) -> int:
        """Validate a send/recv peer rank; ValueError as numpy-style argument errors are."""
        if self._size == 1:
            raise ValueError(f"rank {self._rank}: {op}: a group of size 1 has no other rank to {op} with")
        if isinstance(peer, bool) or not isinstance(peer, numbers.Integral):
            raise TypeError(f"rank {self._rank}: {op}: {role} must be an integer rank, got {type(peer).__name__}")
        peer = int(peer)
        if not 0 <= peer < self._size:
            raise ValueError(f"rank {self._rank}: {op}: {role}={peer} is not a rank of group {self.gid!r} "
                             f"(size {self._size})")
        if peer == self._rank:
            raise ValueError(f"rank {self._rank}: {op}: {role}={peer} is this rank itself")
        return peer

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.settings.timeout
        return deadlines.check_timeout(timeout)

    def p2p_turn(self, peer: int, outgoing: bool, op: str, timeout: float | None,
                 wait: bool = True, ready: Callable[[], bool] | None = None) -> threading.Lock | None:
        """This thread's turn at the messages to (or from) `peer`, held until its message has gone
        (released by the caller). Messages of a pair go one at a time in each direction: two
        threads' frames on one connection would interleave, and a message number be taken twice.
        A second thread waits for its turn, up to its timeout; with `wait` False, None if busy.
        `ready`: looked at while it waits (a receive whose message the turn's holder read and
        kept for it, `tags`); once it says True, None: the turn is not needed."""
        key = (peer, outgoing)
        turn = self._p2p_turns.get(key)
        if turn is None:
            turn = self._p2p_turns.setdefault(key, threading.Lock())
        if not turn.acquire(False):
            if not wait:
                return None
            limit = self._timeout(timeout)  # (the progress thread never waits here: it opens with `wait` False)
            if ready is None:  # (in slices: on the main thread a signal's handler runs between them)
                deadline = deadlines.after(limit)
                while True:
                    began, asked = time.monotonic(), min(deadlines.thread_wait(deadlines.left(deadline)), deadlines.SLICE)
                    taken = turn.acquire(timeout=asked)
                    deadline += deadlines.stopped_for(began, asked)  # (the process was stopped: not counted)
                    if taken or deadlines.passed(deadline):
                        break
            else:
                deadline = deadlines.after(limit)
                while True:
                    began, asked = time.monotonic(), max(0.0, min(HELD_LOOK, deadlines.left(deadline)))
                    taken = turn.acquire(timeout=asked)
                    deadline += deadlines.stopped_for(began, asked)
                    if taken or deadlines.left(deadline) <= 0:
                        break
                    if ready():
                        return None
            if not taken:
                raise known(RingTimeoutError(busy_pair(self._rank, op, peer, outgoing, self.gid, limit)),
                            rank=self._rank, group=self.gid, op=op, peer=peer)
        self._p2p_holders[key] = threading.current_thread()  # for `check_closable`
        if self._closed:  # closed while this thread waited for its turn (or was about to take it)
            turn.release()
            self.check_usable(op)
        return turn

    def p2p_channel(self, peer: int, outgoing: bool, timeout: float | None = None,
                    wait: bool = True, op: str = "recv") -> tuple[Channel, int] | None:
        """The direct connection for messages to (or from) `peer`, opened on first use; and its
        message number (the k-th message between the pair in that direction). With `wait`
        False, None when the connection from `peer` has not arrived yet (nothing is counted)."""
        table = self._p2p_out if outgoing else self._p2p_in
        if self._outs:
            self._check_told(op, peer if outgoing else None)
        if peer not in table:
            assert self._endpoint is not None
            # (A first message's dial, to a rank that takes the connection but never answers, is no
            # progress either: the call's timeout bounds it, where shorter than the connect timeout.)
            bound = self._timeout(timeout)
            by_call = outgoing and bound < self.settings.connect_timeout
            deadline = deadlines.after(min(self.settings.connect_timeout, bound) if outgoing else bound)

            asker = None if outgoing else self.asker(peer)

            def check() -> None:  # while it waits: the group failed here meanwhile (another message, a collective)
                self.check_usable(op)
                if asker is not None:
                    exc = self.heard_by_asking(peer, op, asker.look())
                    if exc is not None:
                        self._fail(op, [], None, [], exc)
                        raise exc

            if outgoing:
                self._endpoint.note_dialing(self.gid, peer)  # the receiver's asks: keep waiting
                try:
                    sock = self._endpoint.connect(self._addresses[peer], InboxKey(self.gid, self._rank, "p2p", 0),
                                                  deadline, f"rank {peer} of group {self.gid!r}", up=True, check=check,
                                                  me=self._rank, peer_rank=peer,
                                                  limit=f"the call's timeout={bound:g} s" if by_call else None)
                except ConnectError as exc:
                    self._endpoint.note_not_dialed(self.gid, peer)
                    if not (by_call and deadlines.left(deadline) < 1.0):  # (its last try may end before it)
                        raise
                    raise known(RingTimeoutError(str(exc)), rank=self._rank, group=self.gid, op=op, peer=peer,
                                address=exc.address) from None  # the call's timeout= ran out: its error
                except BaseException:
                    self._endpoint.note_not_dialed(self.gid, peer)
                    raise
                ch = Channel(sock, me=self._rank, peer=peer, group=self.gid, role="p2p-out",
                             world_ranks=self._world_ranks)
                table[peer] = [ch, 0]
                with self._outs_lock:
                    self._outs_poll.register(ch.fd, select.POLLIN)
                    self._outs[ch.fd] = (peer, ch)
                if self._broken:  # it broke while this dialed (the receiver's asks: keep waiting)
                    self._refuse_message(ch, op)
            elif not wait:
                if self.p2p_incoming(peer, op) is None:
                    return None
            else:
                assert asker is not None
                try:
                    sock = self._endpoint.take(InboxKey(self.gid, peer, "p2p", 0), deadline,
                                               f"{op} in group {self.gid!r}: waiting for rank {peer} to send",
                                               check=check, source=self._addresses[peer], me=self._rank,
                                               none_came=nothing_sent(peer, deadlines.left(deadline)))
                finally:
                    asker.close()
                table[peer] = [Channel(sock, me=self._rank, peer=peer, group=self.gid, role="p2p-in",
                                       world_ranks=self._world_ranks, listens=self._addresses[peer]), 0]
        elif outgoing:
            if self._broken:  # it broke after this send started, before its turn came
                self._refuse_message(table[peer][0], op)
            self._check_outgoing(table[peer][0], peer)
        entry = table[peer]
        entry[1] += 1
        return entry[0], entry[1] - 1

    def p2p_uncount(self, peer: int) -> None:
        """A receive from `peer` armed for the pair's next message ended with none of it read
        (`p2p.Receiving.spare`): that message is the next receive's, under the same number."""
        self._p2p_in[peer][1] -= 1

    def refuse_queued_send(self, peer: int, op: str) -> None:
        """A send (on the progress thread) that reaches its turn in a group broken after it was
        queued: where the pair's connection is made and free, refused as a blocking send is
        (`_refuse_message`: the ABORT on it, then GroupBrokenError); its receiver raises the failure."""
        entry = self._p2p_out.get(peer)
        if entry is None:
            return
        turn = self.p2p_turn(peer, True, op, None, wait=False)
        if turn is None:
            return  # another thread's send has it: that one refuses so
        try:
            self._refuse_message(entry[0], op)
        finally:
            turn.release()

    def _refuse_message(self, ch: Channel, op: str) -> None:
        """A message about to go on `ch` (its pair's turn held) in a group that broke after it
        started: it does not go; the failure's ABORT does, if not told there yet (the failing
        thread's `_tell_pairs` passes a connection whose turn is held), and the send raises
        GroupBrokenError. Its receiver raises the failure, as the sender does."""
        if self._abort_frame is not None:
            aborts.tell(ch, self._abort_frame, deadlines.after(aborts.ABORT_BUDGET))
        self.check_usable(op)

    def asker(self, peer: int, lane: int = ASK_MESSAGE, first: float = ASK_AFTER) -> Asker:
        """Asks for a wait for `peer`'s message connection (or its link, `lane` ASK_LINK):
        whether the group failed at `peer` (`asking`), the first after `first` seconds."""
        assert self._endpoint is not None
        return Asker(self._endpoint, self._addresses[peer], self.gid, self._rank, f"rank {peer} of group {self.gid!r}",
                     lane, first)

    def heard_by_asking(self, peer: int, op: str, told: dict[str, Any] | None) -> RingError | None:
        """The error a receive waiting for `peer`'s connection raises, where the ABORT `told` (the
        answer to its ask: `asking`) says the group failed at `peer`; its caller breaks the group
        here too, as one read on a connection does. None if nothing was told, or if the connection
        has come meanwhile: a sender connects before it sends, so one that failed after sending
        made it before failing, and it carries the messages, then the ABORT."""
        assert self._endpoint is not None
        if told is None or peer in self._endpoint.filed(self.gid, "p2p"):
            return None
        try:
            aborts.raise_remote(told, SimpleNamespace(me=self._rank, peer=peer, world_ranks=self._world_ranks), op)  # type: ignore[arg-type]
        except RingError as exc:
            return exc
        raise AssertionError("raise_remote returned")  # pragma: no cover

    def p2p_incoming(self, peer: int, op: str, take: bool = True) -> Channel | None:
        """The connection for messages from `peer` if it has arrived (nothing is counted), else
        None; with `take` False, only one already taken. PeerLostError if `peer` left the job
        without opening it (as a recv's wait for it finds)."""
        entry = self._p2p_in.get(peer)
        if entry is not None or not take:
            return entry[0] if entry is not None else None
        assert self._endpoint is not None
        sock = self._endpoint.take_nowait(InboxKey(self.gid, peer, "p2p", 0),
                                          f"{op} in group {self.gid!r}: waiting for rank {peer} to send",
                                          self._addresses[peer], me=self._rank)
        if sock is None:
            return None
        ch = Channel(sock, me=self._rank, peer=peer, group=self.gid, role="p2p-in", world_ranks=self._world_ranks,
                     listens=self._addresses[peer])
        self._p2p_in[peer] = [ch, 0]
        return ch

    def p2p_arrivals(self) -> list[int]:
        """The senders whose arrived connection has bytes read ahead or to read now: one poll of
        them all, that does not wait (an any-source receive's first look, `any_source`). A
        connection closed for good stays readable: `p2p_unpoll` it."""
        table = self._p2p_in
        if self._endpoint is not None:  # connections that arrived since: a new sender is seen at once
            for peer in self._endpoint.filed(self.gid, "p2p"):
                if peer in table or not 0 <= peer < self._size:
                    continue
                # Under the pair's turn: a thread holding it may be waiting in the inbox for this one.
                turn = self.p2p_turn(peer, False, "recv_any", None, wait=False)
                if turn is not None:
                    try:
                        self.p2p_incoming(peer, "recv_any")
                    except PeerLostError:
                        pass  # (it left as it came: the inbox had it a moment ago) a look at it says so
                    finally:
                        turn.release()
        with self._in_lock:  # (one poll object: two threads may not poll it at once)
            poller = self._in_poller
            if poller is None:
                poller = self._in_poller = select.poll()
            entries = list(table.items())  # (another thread may add one meanwhile)
            found = self._arrived(poller, entries)
        found.extend(peer for peer, (ch, _) in entries if ch.reader.end != ch.reader.start)
        return found

    def _arrived(self, poller: "select.poll", entries: list) -> list[int]:
        """The senders whose connection `poller` finds readable, each connection among `entries`
        registered first (under `_in_lock`; a function of its own: `handle._join`)."""
        polled = self._in_polled
        if len(polled) + len(self._in_unpolled) < len(entries):
            for peer, (ch, _) in entries:
                if ch.fd not in polled and peer not in self._in_unpolled:
                    poller.register(ch.fd, select.POLLIN)
                    polled[ch.fd] = peer
        return [polled[fd] for fd, _ in poller.poll(0)]

    def p2p_unpoll(self, peer: int) -> None:
        """Leave the connection from `peer` out of `p2p_arrivals` (it closed between messages)."""
        with self._in_lock:
            self._in_unpolled.add(peer)
            entry = self._p2p_in.get(peer)
            if entry is not None and self._in_polled.pop(entry[0].fd, None) is not None:
                self._in_poller.unregister(entry[0].fd)

    def p2p_take_turns(self, peers: list[int], op: str) -> dict[int, threading.Lock]:
        """The turns at messages from `peers` that are free now, taken (as `p2p_turn` with `wait`
        False, for many peers at once: an any-source receive's look)."""
        me = threading.current_thread()
        taken = {}
        turns, holders = self._p2p_turns, self._p2p_holders
        for peer in peers:
            key = (peer, False)
            turn = turns.get(key)
            if turn is None:
                turn = turns.setdefault(key, threading.Lock())
            if turn.acquire(False):
                holders[key] = me
                taken[peer] = turn
        if self._closed:  # closed while it looked
            for turn in taken.values():
                turn.release()
            self.check_usable(op)
        return taken

    def p2p_busy(self, peer: int, outgoing: bool) -> bool:
        """Whether a message's turn at the pair's direction is taken now (`p2p_turn`)."""
        turn = self._p2p_turns.get((peer, outgoing))
        return turn is not None and turn.locked()

    def departure(self, peer: int) -> str | None:
        """Why rank `peer` left the job, if this rank has heard that it did."""
        return self._endpoint.departed(self._addresses[peer]) if self._endpoint is not None else None

    def _check_told(self, op: str, peer: int | None) -> None:
        """Before a message (to `peer`, or from a rank): an ABORT come back on the connection for
        messages to another rank breaks the group here too, raised as this call's error. That
        rank's group broke (a message of this rank's it could not take, say) and it told its pairs
        (`_tell_pairs`): this rank, not told on the connection the call uses, went on with its
        other pairs, and the ranks waiting on it never heard. One poll of every such connection
        (a microsecond for a few). A connection only closed is left to a message to that rank:
        a rank that has left the job after its last receive breaks nothing."""
        if not self._outs_lock.acquire(False):
            return  # another thread is looking (a poll object takes one thread at a time)
        try:
            found = self._outs_poll.poll(0)
            for fd, _ in found:
                theirs, ch = self._outs.get(fd, (-1, None))
                if theirs == peer:
                    continue
                if ch is None or ch.closed or self._p2p_out.get(theirs, [None])[0] is not ch:
                    self._unwatch(fd)  # (gone with a connection cut: left to a message to that rank)
                    continue
                turn = self._p2p_turns.get((theirs, True))
                if turn is None or not turn.acquire(False):  # its holder reads what came back itself
                    continue
                try:
                    why = ch.gone()
                    if why:  # closed: left to a message to that rank
                        self._unwatch(fd)
                    elif why == "":
                        try:
                            aborts.pending_abort([ch], op)
                        except RingError as exc:
                            self._fail(op, [ch] + (self.channels if self.ring is not None else []), None, [], exc)
                            raise
                finally:
                    turn.release()
        finally:
            self._outs_lock.release()

    def _unwatch(self, fd: int) -> None:
        """Stop looking at a connection for what comes back (under `_outs_lock`)."""
        self._outs.pop(fd, None)
        try:
            self._outs_poll.unregister(fd)
        except KeyError:
            pass

    def _check_outgoing(self, ch: Channel, peer: int) -> None:
        """Before a message goes on the open connection to `peer`: PeerLostError if that rank has
        left the job or closed the connection, its ABORT if it sent one. Otherwise a small message
        would land in the kernel's buffer of a connection nobody reads, and its send return as if
        delivered. (A rank that leaves after this look is the message's loss, as in MPI.)"""
        why = self.departure(peer)
        if why is None:
            why = "" if ch.reader.staged() else ch.gone()
            if why is None:
                return  # the common case: nothing has come back on it
            if why == "":
                aborts.pending_abort([ch], "send")  # the receiver's ABORT; anything else is left
                return
        exc = about(ch, PeerLostError(f"{self.rank_name}: lost {ch.describe()}: {why}; the message was not sent"),
                    "send")
        self._fail("send", [ch] + (self.channels if self.ring is not None else []), None, [], exc)
        raise exc  # a failed message breaks the group, as one that fails while it is sent

    def forget_in_child(self) -> None:
        """In a forked child (its copies of the connections are closed by `forks`): refuse every
        operation, saying whose group this is. No lock is taken: the child has no other thread."""
        why = (f"this group belongs to process {forks.parent()}; a forked child (process {os.getpid()}) "
               f"cannot use it")

        def refuse(op: str) -> None:
            raise RingError(f"rank {self._rank}: {op} on group {self.gid!r}: {why}")

        self.check_usable = refuse  # type: ignore[method-assign] - every operation checks the group first
        self.held = Held()  # the parent's messages read ahead, and its lock, which a parent's thread may have held
        if self.mailbox is not None:  # (`own_messages`)
            self.mailbox.forget_in_child(self.gid)
            self.mailbox = None
        self._broken = why  # collectives check only groups marked closed or broken
        self._finalizer.detach()  # the connections and memory are the parent's: the child closes nothing of them

    def close(self) -> None:
        """Release the group's connections. Idempotent; the group is unusable afterwards.

        Not while another thread is in a collective on it, or in a send or recv (RingError): its
        connections and shared memory would go from under that call. (The progress thread's
        calls are ended first by `work.before_close`, as are its runner's.)"""
        self.check_closable()
        self._release()

    def check_closable(self) -> None:
        """RingError if another thread (not one running non-blocking operations) is in a collective
        on this group, or sending or receiving a message on it."""
        if self._closed:
            return
        owner = self._in_call()
        me = threading.current_thread()
        if owner is not None and owner is not me and owner.ident not in engine.backgrounds:
            raise RingError(f"rank {self._rank}: group {self.gid!r} cannot be closed from thread {me.name!r} "
                            f"while {self._running()} runs on it from thread {thread_name(owner)}: close it from "
                            f"that thread once the call has returned")
        for (peer, outgoing), turn in list(self._p2p_turns.items()):  # a message under way holds its pair's turn
            holder = self._p2p_holders.get((peer, outgoing))
            if (turn.locked() and holder is not None and holder is not me and holder.is_alive()
                    and holder.ident not in engine.backgrounds):
                raise RingError(f"rank {self._rank}: group {self.gid!r} cannot be closed from thread {me.name!r} "
                                f"while a message {'to' if outgoing else 'from'} rank {peer} is awaited or under way "
                                f"on it from thread {holder.name!r}: close it once that call has returned")

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signals = None
        self.held.clear()  # messages read ahead that no receive took: gone with the group
        self._end_mailbox()
        self._finalizer()  # `_release_parts`, once
        _open_groups.discard(self)


def _release_parts(parts: dict[str, Any], p2p_out: dict[int, list], p2p_in: dict[int, list],
                   endpoint: Endpoint | None, gid: str, rank: int) -> None:
    """Close what a group holds (`parts`: its shm link, hierarchy, links and ring, each with a
    close(), or None): at `close()`, or when a group nobody closed is collected. Ranks that
    connect to this one (`rank`) for it later are told it closed (`Endpoint.discard`)."""
    for name in ("shm", "hierarchy", "links", "ring"):
        part = parts[name]
        if part is not None:
            part.close()
    for ch, _ in list(p2p_out.values()) + list(p2p_in.values()):
        ch.close()
    if endpoint is not None:
        endpoint.discard(gid, closed_by=rank)


def _waited(exc: BaseException) -> tuple[int, ...]:
    """The world ranks a failure (a timeout) waited for, as it tells the launcher (`engine.waited_for`)."""
    return getattr(exc, "ringdist_waited_for", ())


def not_a_group(group: Any, call: str | None = None) -> TypeError:
    """The error for a `group=` that is not a group, naming this process's world rank (where a
    world group is made) and the call."""
    made = default_made
    call = wire.called_as(call) if call else call  # (max_scatter as the reduce_scatter(op='max') it was)
    return TypeError(f"{f'rank {made.rank()}: ' if made is not None else ''}{f'{call}: ' if call else ''}group "
                     f"must be a ringdist Group or None, got {type(group).__name__}")


def nothing_sent(peer: int, limit: float) -> str:
    """What a receive's timeout says when `peer` never sent it a message on the group (its first
    opens the pair's connection)."""
    return (f"it sent this rank no message on this group within {limit:.3g} s (is it in another call, or "
            f"waiting to receive too? `timeout=` or RINGDIST_TIMEOUT sets how long a receive waits)")


def busy_pair(rank: int, op: str, peer: int, outgoing: bool, gid: str, limit: float) -> str:
    """Why a message never got its turn at a pair's direction (`Comm.p2p_turn`)."""
    way = "to" if outgoing else "from"
    return (f"rank {rank}: {op} {way} rank {peer} of group {gid!r}: an earlier message {way} it (another "
            f"thread's, or one queued with async_op) did not end within {limit:g} s (messages between a pair go "
            f"one at a time in each direction)")


def close_all(note: str = "") -> None:
    """Release every open group (at exit: a thread still in a collective loses it); `note`: what
    their "is closed" errors add."""
    for group in list(_open_groups):
        if note:
            group.closed_note = note
        Comm._release(group)
