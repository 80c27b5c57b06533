"""Connections filed for a group a rank has not made: a member dialing made-up groups cannot take
a rank's file descriptors, and the connections of a peer ahead in a split still all arrive.

Ranks are threads (`harness`); the member dialing made-up groups is a real `Endpoint` of the
job (the real handshake), dialing rank 0's real port.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

import ringdist as rd
from harness import SECRET, run_ranks
from ringdist import endpoint as endpoint_module
from ringdist.endpoint import Endpoint, InboxKey

FLOOD = 1000
PER_PEER = getattr(endpoint_module, "EARLY_PER_PEER", 256)  # (the cap, for a run without it)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled(count, want, timeout: float = 10.0) -> int:
    """`count()` once it is at most `want` (the acceptor files arrivals a moment after their
    WELCOME), or its value at `timeout`."""
    deadline = time.monotonic() + timeout
    while count() > want and time.monotonic() < deadline:
        time.sleep(0.02)
    return count()


def _flood(address, count: int, *, ranks: int = 1, closing: bool = True) -> list:
    """`count` connections to `address` for made-up groups, each through the real handshake,
    claiming group ranks 1..ranks in turn: every other one closed at once (with `closing`),
    the rest held open idle. The ones held and the dialer's endpoint, for the caller to close."""
    rogue = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="rogue")
    held = []
    for i in range(count):
        sock = rogue.connect(address, InboxKey(f"made-up/{i}", 1 + i % ranks, "mesh", 0), time.monotonic() + 5,
                             "rank 0")
        if closing and i % 2:
            sock.close()
        else:
            held.append(sock)
    return held + [rogue]


def _close(held) -> None:
    for thing in held:
        thing.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_member_dialing_made_up_groups_cannot_pin_a_rank_s_descriptors(caplog):
    # 1,000 made-up group ids from one member, half closed at once, half idling: rank 0 kept
    # all of them (EMFILE, and its next split failed). It keeps EARLY_PER_PEER now, logs a few lines.
    held: list = []

    def rank(g):
        rd.barrier(group=g)
        if g.rank() == 0:
            before = _fds()
            rd.barrier(group=g)  # rank 1 floods rank 0
            rd.barrier(group=g)
            rogue_fds = len(held) + len(held[-1]._listeners) + 1  # (its acceptor's wake-up pipe: 2)
            kept = _settled(lambda: _fds() - before - rogue_fds, PER_PEER + 2)
            assert kept <= PER_PEER + 2, kept
        else:
            rd.barrier(group=g)
            if g.rank() == 1:
                held.extend(_flood(g.addresses[0], FLOOD))
            rd.barrier(group=g)
        sub = g.split(color=0, key=g.size() - g.rank())  # the next split and its collectives work
        return rd.all_sum(np.ones(3) * sub.rank(), group=sub).tolist()

    try:
        with caplog.at_level(logging.WARNING, "ringdist"):
            assert run_ranks(3, rank) == [[3.0] * 3] * 3
    finally:
        _close(held)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and len(dropped) <= 12, dropped  # rate-bounded, as refusals are
    assert "rank 0: dropped connection from 127.0.0.1:" in dropped[0], dropped[0]
    assert "unclaimed mesh connection (lane 0) from rank 1 of group 'made-up/" in dropped[0], dropped[0]
    assert f"more than {PER_PEER} from that rank wait" in dropped[0], dropped[0]


def test_a_member_naming_many_ranks_is_bounded_in_all(monkeypatch):
    # A member may claim any group rank in its HELLO: the total is capped too.
    monkeypatch.setattr(endpoint_module, "EARLY_KEPT", 50, raising=False)
    ep = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="rank 0")
    held = []
    try:
        held = _flood(ep.addresses, 200, ranks=200, closing=False)
        deadline = time.monotonic() + 10  # (the last arrival is filed a moment after its WELCOME)
        while not any(k.group == "made-up/199" for k in list(ep._inbox)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(map(len, ep._inbox.values())) == 50
        assert len(ep._early) == 50 and sum(ep._early_peers.values()) == 50, (len(ep._early), ep._early_peers)
        # the newest kept, the oldest let go
        assert sorted(int(k.group.split("/")[1]) for k in ep._inbox) == list(range(150, 200))
    finally:
        _close(held)
        ep.close()


def test_a_connection_whose_dialer_closed_it_is_let_go_first_and_one_with_bytes_to_read_is_kept(monkeypatch):
    monkeypatch.setattr(endpoint_module, "EARLY_PER_PEER", 4, raising=False)
    ep = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="rank 0")
    rogue = Endpoint(SECRET, ["127.0.0.1"], connect_timeout=5, label="rank 1")
    try:
        first = rogue.connect(ep.addresses, InboxKey("later", 1, "p2p", 0), time.monotonic() + 5, "rank 0")
        first.sendall(b"a message sent before rank 0 made the group")
        first.close()  # and its sender gone: still to be read
        for lane in range(1, 9):  # closed with nothing sent: let go once the cap is passed
            rogue.connect(ep.addresses, InboxKey("later", 1, "ring", lane), time.monotonic() + 5, "rank 0").close()
            time.sleep(0.05)  # (its close seen before the next arrives)
        assert _settled(lambda: sum(map(len, ep._inbox.values())), 4) <= 4
        conn = ep.take_nowait(InboxKey("later", 1, "p2p", 0))
        assert conn is not None and conn.recv(100) == b"a message sent before rank 0 made the group"
        conn.close()
    finally:
        rogue.close()
        ep.close()


def test_connections_of_peers_ahead_in_a_split_are_all_kept_and_claimed(monkeypatch, caplog):
    # Rank 0 makes each new group half a second late: its left neighbour has dialed its ring
    # before then. None is dropped; each is claimed, none left counted; the messages its peers
    # send it come.
    n = 10  # past 8 ranks: links opened on first use
    from ringdist.comm import Comm
    from ringdist.group import Group

    def late(self, **fields):
        if fields["rank"] == 0 and fields["gid"] != "world":
            time.sleep(0.5)
        Comm.__init__(self, **fields)

    monkeypatch.setattr(Group, "__init__", late)
    early: list = []  # the connections counted as early as they came (where the endpoint counts them)
    keep_early = getattr(Endpoint, "_keep_early", None)
    if keep_early is not None:
        def counted(self, key, conn, addr):
            early.append(key)
            return keep_early(self, key, conn, addr)

        monkeypatch.setattr(Endpoint, "_keep_early", counted)
    endpoints = []

    def rank(g):
        endpoints.append(g.endpoint)
        results = []
        for round_ in range(3):
            sub = g.split(color=0)
            if sub.rank() != 0:
                rd.send(np.full(2, sub.rank(), dtype=np.int64), 0, group=sub)
                got = None
            else:
                got = sorted(int(rd.recv((2,), np.int64, p, group=sub)[0]) for p in range(1, sub.size()))
            results.append((rd.all_sum(np.ones(1), group=sub).tolist(), got))
        return results

    with caplog.at_level(logging.WARNING, "ringdist"):
        out = run_ranks(n, rank)
    assert out[0] == [([float(n)], list(range(1, n)))] * 3, out[0]
    assert all(o == [([float(n)], None)] * 3 for o in out[1:]), out
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
    # (The world group's own may come early too, where a peer's is made first: kept all the same.)
    assert keep_early is None or {(f"world/{i}:0", "ring") for i in range(3)} <= {(k.group, k.kind) for k in early}, \
        early
    assert all(not getattr(ep, "_early", None) and not getattr(ep, "_early_peers", None) for ep in endpoints)
