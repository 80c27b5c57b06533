"""The shared-memory link: one segment per rank of a group whose ranks are on one machine.

Each rank makes an anonymous memory file (`memfd_create`: no name another process could
open, freed when the last process using it goes, however it goes) and hands it to every
peer as a file descriptor over an authenticated Unix-domain connection (the same HMAC
handshake as TCP, on an abstract socket: nothing in the file system), where the peer maps
it and closes the descriptor. Where Linux's memfd and abstract sockets are missing (macOS),
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

A segment is two slots, used alternately by the link's rounds (`round`): a rank writes
slot k % 2 in round k only after round k-1's signal from every peer, which each peer sent
after it had finished reading round k-2 from the same slot. Sized so that every mapped
segment together stays within `MAPPED_BYTES`, whatever N (slots of 3 MiB on 2 ranks,
384 KiB on 16); pages are resident only once touched.
"""

from __future__ import annotations

import logging
import mmap
import struct

from . import channel, deadlines, posixshm, votes
from .endpoint import Endpoint, InboxKey
from .errors import ConnectError, ProtocolError
from .links import Links

log = logging.getLogger("ringdist")

MAPPED_BYTES = 12 << 20  # every rank's segment together, as mapped by each rank (two slots each)
ALIGN = 4096
_SIZE = struct.Struct("<Q")


def slot_bytes(n: int) -> int:
    """Bytes of one slot in a group of `n` ranks."""
    return max(ALIGN, MAPPED_BYTES // (2 * n) // ALIGN * ALIGN)


class ShmLink:
    """This rank's segment and its peers', mapped: `slot(p, k)` is rank p's slot for round k."""

    def __init__(self, rank: int, maps: dict[int, mmap.mmap], slot: int):
        self.rank = rank
        self.maps = maps  # rank -> its segment (this rank's own included)
        self.slot_size = slot
        self.rounds = 0  # rounds run so far: the next one uses slot rounds % 2
        self._views = {p: memoryview(m) for p, m in maps.items()}

    def next_round(self) -> int:
        k = self.rounds
        self.rounds += 1
        return k

    def slot(self, p: int, k: int) -> memoryview:
        base = (k & 1) * self.slot_size
        return self._views[p][base:base + self.slot_size]

    def close(self) -> None:
        for view in self._views.values():
            view.release()
        self._views.clear()
        for mem in self.maps.values():
            channel.unmap(mem)
        self.maps.clear()


def open_link(endpoint: Endpoint, links: Links, *, group: str, rank: int, size: int,
              addresses: list[list[tuple[str, int]]], wanted: bool, timeout: float) -> ShmLink | None:
    """The group's shared-memory link, or None (TCP) when any rank cannot or will not build it.

    Every rank of a group calls this when the group is made: the vote (`votes`) runs
    whatever this rank's settings, so ranks always agree."""
    deadline = deadlines.after(timeout)
    slot = slot_bytes(size)
    own_fd, own_map = -1, None
    dialed: dict[int, object] = {}
    maps: dict[int, mmap.mmap] = {}
    try:
        yes = wanted and endpoint.local_name is not None and all(addresses[p] for p in range(size))
        if yes:
            own_fd, own_map = _segment(endpoint, 2 * slot, f"rank {rank} of group {group!r}")
            yes = own_map is not None
        if yes:
            for p in range(rank + 1, size):
                sock = endpoint.connect_local(addresses[p][0], InboxKey(group, rank, "shm", 0), deadline,
                                              f"rank {p} of group {group!r}")
                if sock is None:
                    yes = False
                    break
                dialed[p] = sock
        if not votes.vote(links, yes, deadlines.left(deadline)):
            return None
        assert own_map is not None
        maps[rank] = own_map
        offer = _SIZE.pack(2 * slot)
        for p, sock in dialed.items():
            channel.send_fd(sock, own_fd, offer, deadline, peer=f"rank {p} of group {group!r}")
        for p in range(rank):
            what = f"rank {p} of group {group!r}"
            sock = endpoint.take(InboxKey(group, p, "shm", 0), deadline,
                                 f"group {group!r}: waiting for rank {p}'s shared memory")
            try:
                maps[p] = _receive(sock, 2 * slot, deadline, what)
                channel.send_fd(sock, own_fd, offer, deadline, peer=what)
            finally:
                sock.close()
        for p, sock in dialed.items():
            maps[p] = _receive(sock, 2 * slot, deadline, f"rank {p} of group {group!r}")
        own_map = None  # in `maps` now
        return ShmLink(rank, maps, slot)
    except BaseException:
        for mem in maps.values():
            channel.unmap(mem)
        raise
    finally:
        for sock in dialed.values():
            sock.close()
        if own_fd >= 0:
            channel.close_quietly(own_fd)
        if own_map is not None and rank not in maps:
            channel.unmap(own_map)


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


def _receive(sock: object, size: int, deadline: float, peer: str) -> mmap.mmap:
    data, fd = channel.recv_fd(sock, _SIZE.size, deadline, peer=peer)  # type: ignore[arg-type]
    (announced,) = _SIZE.unpack(data)
    if announced != size:
        channel.close_quietly(fd)
        raise ProtocolError(f"{peer}: shared memory of {announced} bytes, expected {size} "
                            f"(ranks with different versions of ringdist?)")
    return channel.map_segment(fd, size, peer)
