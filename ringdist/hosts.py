"""Which ranks of a group share a host: the layout hierarchical algorithms run on.

Ranks listening on the same IP addresses are on one host (`layout`); every rank computes
the same layout from the addresses every rank has. A group is hierarchical (`Hierarchy`)
when it spans several hosts with the same number of ranks (2 or more) on each and has no
shared memory across the whole group: its large collectives then move bytes between
hosts only between ranks with the same index on their hosts (as NCCL's trees and rings
across nodes do), and within a host over the host's own shared-memory link where its
ranks built one (else over their TCP connections).

Whether a host's ranks can share memory is still decided by exchanging a segment
(`shm`), never from addresses: the layout only says where the hierarchy's steps go.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shm import ShmLink


def layout(addresses: list[list[tuple[str, int]]]) -> list[list[int]]:
    """The group's ranks by host (ranks listening on the same set of IPs), hosts in the
    order of their lowest rank, ranks of a host in rank order."""
    hosts: dict[frozenset[str], list[int]] = {}
    for rank, listens in enumerate(addresses):
        hosts.setdefault(frozenset(ip for ip, _ in listens), []).append(rank)
    return list(hosts.values())


def hierarchical(hosts: list[list[int]]) -> bool:
    """Whether a group with this layout runs hierarchical algorithms: 2 or more hosts, each
    with the same number of ranks, 2 or more."""
    return len(hosts) >= 2 and len(hosts[0]) >= 2 and all(len(h) == len(hosts[0]) for h in hosts)


@dataclass
class Hierarchy:
    """This rank's place in a hierarchical group: `hosts[h][i]` is the group rank with index
    i on host h; this rank is `hosts[host][local]`."""

    hosts: list[list[int]]
    host: int
    local: int
    link: ShmLink | None  # shared memory among this host's ranks (indexed by local index), or None

    @classmethod
    def of(cls, hosts: list[list[int]], rank: int, link: ShmLink | None) -> "Hierarchy":
        host = next(h for h, ranks in enumerate(hosts) if rank in ranks)
        return cls(hosts, host, hosts[host].index(rank), link)

    @property
    def local_peers(self) -> list[int]:
        """The other ranks of this host, by local index after this rank's (nearest first)."""
        ranks = self.hosts[self.host]
        return [ranks[(self.local + k) % len(ranks)] for k in range(1, len(ranks))]

    @property
    def cross_peers(self) -> list[int]:
        """The ranks with this rank's local index on the other hosts, by host after this one's."""
        n = len(self.hosts)
        return [self.hosts[(self.host + k) % n][self.local] for k in range(1, n)]

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
