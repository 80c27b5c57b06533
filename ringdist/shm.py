"""The shared-memory link: one segment per rank of a group whose ranks are on one machine.

Each rank makes an anonymous memory file (`memfd_create`: no name another process could
open, freed when the last process using it goes, however it goes) and hands it to every
peer as a file descriptor over an authenticated Unix-domain connection (the same HMAC
handshake as TCP, on an abstract socket: nothing in the file system), where the peer maps
it and closes the descriptor (`channel.map_shared`). Where Linux's memfd and abstract sockets are missing (macOS),
or with `RINGDIST_SHM=posix`, the portable backend (`posixshm`) does the same with POSIX
shared memory unlinked as soon as it is made and a Unix socket file in a private (0700)
directory; the endpoint's `local_backend` says which. A rank reads every peer's segment
directly; only the "my data is in my segment" signals go over the group's TCP connections
(the algorithms' header exchanges), so a waiting rank blocks in the kernel and sees a dead
peer at once.

"Same machine" means that exchange worked with every peer. Whether a group uses the link
is one decision for the whole group (`votes`: over the mesh, or in dissemination rounds
in a group of more than 8 ranks): every rank says whether it made its segment and reached
every peer it dialed (and has shared memory on: `RINGDIST_SHM`), and the link is used only
if every rank said yes; otherwise the group uses TCP and nothing waits on a link a peer did
not build.

A segment is a control page (`shmsignal`) and two slots, used alternately by the link's
rounds (`round`): a rank writes slot k % 2 in round k only after round k-1's signal from
every peer, which each peer sent after it had finished reading round k-2 from the same
slot. Sized so that every mapped segment together stays within `MAPPED_BYTES`, whatever N
(slots of 3 MiB on 2 ranks, 384 KiB on 16); pages are resident only once touched.

Signals go through the control pages (`shmsignal`) where every rank can (Linux on x86-64,
the memfd backend, `RINGDIST_SHM_SIGNALS` not 0): each rank's offer says whether it can,
and sends its eventfd with its segment; every rank sees every offer, so all decide alike.
Otherwise they are the header exchanges over TCP.

Where signals go through memory, each offer also carries the rank's process id and the
address of its control page, and every rank tries a cross-memory read of each peer's
(`crossmem`: random bytes the peer wrote there, so a process id of another pid namespace
cannot pass); a second vote says whether every rank could read every peer (and has
`RINGDIST_SHM_CMA` on). If so the link's `pids` holds the peers' process ids (else None)
and the algorithms read large blocks straight out of a peer's memory.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time

from . import channel, crossmem, deadlines, posixshm, shmsignal, votes
from .endpoint import Endpoint, InboxKey
from .errors import ConnectError, ProtocolError, RingError
from .links import Links

log = logging.getLogger("ringdist")

MAPPED_BYTES = 12 << 20  # every rank's segment together, as mapped by each rank (two slots each)
ALIGN = 4096
# Open files a rank needs room for before it votes for shared memory: per peer, the local socket
# it dialed or took (rank 0 holds N-1 until its segments are mapped), its segment's mapping (Python
# before 3.13 keeps a descriptor for each) and its eventfd; and some to spare.
FDS_PER_PEER = 3
FDS_SPARE = 16
_told_room = False  # this process has warned that a group used TCP for want of descriptors
# Segment bytes; whether signals may go through shared memory (an eventfd follows); the rank's
# process id and the address of its control page (for the cross-memory probe).
_OFFER = struct.Struct("<QBqQ")
_NONCE_AT = shmsignal.CONTROL - 16  # random bytes at the end of a control page, read by the probe


def slot_bytes(n: int) -> int:
    """Bytes of one slot in a group of `n` ranks."""
    return max(ALIGN, MAPPED_BYTES // (2 * n) // ALIGN * ALIGN)


class ShmLink:
    """This rank's segment and its peers', mapped: `slot(p, k)` is rank p's slot for round k."""

    def __init__(self, rank: int, maps: dict[int, mmap.mmap], slot: int, wake: dict[int, int] | None = None,
                 pids: dict[int, int] | None = None):
        self.rank = rank
        # Each peer's process id where this rank can read its memory (`crossmem`), else None.
        self.pids = pids
        self.maps = maps  # rank -> its segment (this rank's own included)
        self.slot_size = slot
        self.rounds = 0  # rounds run so far: the next one uses slot rounds % 2
        self._views = {p: memoryview(m) for p, m in maps.items()}
        # Every rank's two slots, cut once (a small call takes them without slicing).
        base = shmsignal.CONTROL
        self._slots = tuple({p: v[base + parity * slot:base + (parity + 1) * slot] for p, v in self._views.items()}
                            for parity in (0, 1))
        n = len(maps)
        self.others = [(rank + i) % n for i in range(1, n)]  # each rank starts with a different peer
        # Signals through the control pages, or None (over TCP); `wake`: each rank's eventfd.
        self.signals = None if wake is None else shmsignal.Signals(
            rank, {p: v[:shmsignal.CONTROL] for p, v in self._views.items()}, wake, self.others)

    def next_round(self) -> int:
        k = self.rounds
        self.rounds += 1
        return k

    def slot(self, p: int, k: int) -> memoryview:
        return self._slots[k & 1][p]

    def slots(self, k: int) -> dict[int, memoryview]:
        """Every rank's slot for round k."""
        return self._slots[k & 1]

    def close(self) -> None:
        if self.signals is not None:
            self.signals.close()
            self.signals = None
        for views in (*self._slots, self._views):
            for view in views.values():
                try:
                    view.release()
                except BufferError:  # an array over it is still alive: the collector releases it
                    pass
            views.clear()
        for mem in self.maps.values():
            channel.unmap(mem)
        self.maps.clear()


def open_link(endpoint: Endpoint, links: Links, *, group: str, rank: int, size: int,
              addresses: list[list[tuple[str, int]]], wanted: bool, timeout: float,
              signals: bool = True, cross: bool = True) -> ShmLink | None:
    """The group's shared-memory link, or None (TCP) when any rank cannot or will not build it.

    Every rank of a group calls this when the group is made: the vote (`votes`) runs
    whatever this rank's settings, so ranks always agree. `signals`: this rank's wish to
    signal through the control pages (`RINGDIST_SHM_SIGNALS`); `cross`: to read peers'
    memory where it can (`RINGDIST_SHM_CMA`)."""
    began, deadline = time.monotonic(), deadlines.after(timeout)
    slot = slot_bytes(size)
    total = shmsignal.CONTROL + 2 * slot
    own_fd, own_map, own_wake = -1, None, -1
    dialed: dict[int, object] = {}
    maps: dict[int, mmap.mmap] = {}
    wake: dict[int, int] = {}
    probes: dict[int, tuple[int, int]] = {}  # rank -> its process id and control page's address
    try:
        yes = wanted and endpoint.local_name is not None and all(addresses[p] for p in range(size))
        room = channel.fd_room() if yes else None
        if room is not None and room < FDS_PER_PEER * size + FDS_SPARE:
            global _told_room
            log.log(logging.INFO if _told_room else logging.WARNING,  # a warning once a process, not a group
                    "rank %d of group %r: %d more open files would fit under this process's limit (%s), too "
                    "few for shared memory with %d ranks; the group uses TCP (raise `ulimit -n`)",
                    rank, group, room, channel.fd_usage(), size)
            _told_room = True
            yes = False
        if yes:
            own_fd, own_map = _segment(endpoint, total, f"rank {rank} of group {group!r}")
            yes = own_map is not None
        if yes:
            for p in range(rank + 1, size):
                sock = endpoint.connect_local(addresses[p][0], InboxKey(group, rank, "shm", 0), deadline,
                                              f"rank {p} of group {group!r}")
                if sock is None:
                    yes = False
                    break
                dialed[p] = sock
        if not votes.vote(links, yes, deadlines.left(deadline), began):
            endpoint.discard(group, "shm")  # what the ranks below dialed before the vote, and will
            return None
        # A vote decided in its grace (MIN_WAIT) past the deadline: the steps after it get as long.
        deadline = max(deadline, deadlines.after(votes.MIN_WAIT))
        assert own_map is not None
        maps[rank] = own_map
        sealed = endpoint.local_backend != "posix"  # memory files, sealed at their size (`channel.make_segment`)
        if signals and endpoint.local_backend != "posix" and shmsignal.supported():
            own_wake = channel.make_eventfd()
        own_map[_NONCE_AT:shmsignal.CONTROL] = os.urandom(shmsignal.CONTROL - _NONCE_AT)  # for the probe
        offer = _OFFER.pack(total, own_wake >= 0, os.getpid(), crossmem.address(own_map))
        fds = [own_fd] if own_wake < 0 else [own_fd, own_wake]
        every = own_wake >= 0  # whether every rank offered its eventfd
        try:
            for p, sock in dialed.items():
                channel.send_fds(sock, fds, offer, deadline, peer=_who(p, addresses))
            for p in range(rank):
                what = _who(p, addresses)
                sock = endpoint.take(InboxKey(group, p, "shm", 0), deadline,
                                     f"group {group!r}: waiting for rank {p}'s shared memory", source=addresses[p],
                                     me=rank)
                try:
                    maps[p], theirs, probes[p] = _receive(sock, total, deadline, what, sealed)
                    every = _keep(wake, p, theirs, every)
                    channel.send_fds(sock, fds, offer, deadline, peer=what)
                finally:
                    sock.close()
            for p, sock in dialed.items():
                maps[p], theirs, probes[p] = _receive(sock, total, deadline, _who(p, addresses), sealed)
                every = _keep(wake, p, theirs, every)
        except RingError as exc:
            text = str(exc)
            if text.startswith(f"rank {rank}: "):
                raise
            raise type(exc)(f"rank {rank}: making group {group!r}: {text}") from exc
        own_map = None  # in `maps` now
        if every:
            wake[rank], own_wake = own_wake, -1
        else:
            for fd in wake.values():
                channel.close_quietly(fd)
        pids = None
        if every:  # every rank reads every peer's memory, or none does: a second vote
            if cross and crossmem.supported():
                pids = {p: pid for p, (pid, at) in probes.items()
                        if crossmem.reads(pid, at + _NONCE_AT, maps[p][_NONCE_AT:shmsignal.CONTROL])}
            if not votes.vote(links, pids is not None and len(pids) == size - 1, deadlines.left(deadline), began):
                pids = None
        link = ShmLink(rank, maps, slot, wake if every else None, pids)
        wake = {}
        return link
    except BaseException:
        for mem in maps.values():
            channel.unmap(mem)
        for fd in wake.values():
            channel.close_quietly(fd)
        raise
    finally:
        for sock in dialed.values():
            sock.close()
        if own_fd >= 0:
            channel.close_quietly(own_fd)
        if own_wake >= 0:
            channel.close_quietly(own_wake)
        if own_map is not None and rank not in maps:
            channel.unmap(own_map)


def _who(p: int, addresses: list[list[tuple[str, int]]]) -> str:
    """Rank p as an error in the exchange of segments names it."""
    ip, port = addresses[p][0]
    return f"rank {p} ({ip}:{port}, shared memory)"


def _keep(wake: dict[int, int], p: int, fd: int, every: bool) -> bool:
    """Keep rank p's eventfd (-1: it offered none); whether every rank so far offered one."""
    if fd < 0:
        return False
    wake[p] = fd
    return every


def _segment(endpoint: Endpoint, size: int, what: str) -> tuple[int, mmap.mmap | None]:
    """This rank's segment from the endpoint's backend, or (-1, None) when the system will not
    give it (no room in /dev/shm, say): the rank then votes no and the group uses TCP."""
    try:
        if endpoint.local_backend == "posix":
            return posixshm.make_segment(size, what, endpoint.job)
        return channel.make_segment(size, what)
    except ConnectError as exc:
        log.warning("%s; the group uses TCP", exc)
        return -1, None


def _receive(sock: object, size: int, deadline: float, peer: str,
             sealed: bool) -> tuple[mmap.mmap, int, tuple[int, int]]:
    """A peer's segment, mapped (`sealed`: a memory file that must be sealed at its size); its
    eventfd (-1 when it offered none); its process id and control page's address."""
    data, fds = channel.recv_fds(sock, _OFFER.size, 2, deadline, peer=peer)  # type: ignore[arg-type]
    announced, has_wake, pid, at = _OFFER.unpack(data)
    if announced != size or len(fds) != 1 + bool(has_wake):
        for fd in fds:
            channel.close_quietly(fd)
        raise ProtocolError(f"{peer}: shared memory of {announced} bytes with {len(fds)} descriptors, expected "
                            f"{size} bytes (ranks with different versions of ringdist?)")
    try:
        mem = channel.map_segment(fds[0], size, peer, sealed)
    except BaseException:
        for fd in fds[1:]:
            channel.close_quietly(fd)
        raise
    return mem, fds[1] if has_wake else -1, (pid, at)
