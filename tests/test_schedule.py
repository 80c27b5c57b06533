"""Ring schedules, pure: every block reaches every rank exactly once, in N-1 steps."""

from __future__ import annotations

import pytest

from ringdist import schedule


@pytest.mark.parametrize("n", range(2, 9))
@pytest.mark.parametrize("direction", [1, -1])
def test_gather_order_delivers_every_block_once(n, direction):
    have = {r: {r} for r in range(n)}
    for step in range(n - 1):
        sends = {r: schedule.gather_order(r, n, direction)[0][step] for r in range(n)}
        for r in range(n):
            assert sends[r] in have[r], "a rank forwards a block it does not have yet"
            src = (r - direction) % n
            got = schedule.gather_order(r, n, direction)[1][step]
            assert got == sends[src], "what a rank receives is what its upstream neighbour sends"
            have[r].add(got)
    assert all(have[r] == set(range(n)) for r in range(n))


@pytest.mark.parametrize("n", range(2, 9))
@pytest.mark.parametrize("direction", [1, -1])
def test_reduce_scatter_leaves_block_r_complete_on_rank_r(n, direction):
    partial = {r: {b: {r} for b in range(n)} for r in range(n)}  # contributions each rank holds per block
    for step in range(n - 1):
        sent = {r: (schedule.reduce_scatter_order(r, n, direction)[0][step],
                    set(partial[r][schedule.reduce_scatter_order(r, n, direction)[0][step]])) for r in range(n)}
        for r in range(n):
            block, contributions = sent[(r - direction) % n]
            assert block == schedule.reduce_scatter_order(r, n, direction)[1][step]
            partial[r][block] |= contributions
    for r in range(n):
        assert partial[r][r] == set(range(n))


def test_block_bounds_cover_everything_in_order():
    for count in (0, 1, 5, 7, 100):
        for n in (1, 2, 3, 8):
            bounds = schedule.block_bounds(count, n)
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_streams_use_both_directions_only_for_large_blocks():
    assert schedule.streams(1000, 2) == [(1, 0)]
    assert schedule.streams(schedule.BIDIRECTIONAL_MIN, 2) == [(1, 0), (1, 1), (-1, 0), (-1, 1)]
    assert schedule.streams(schedule.BIDIRECTIONAL_MIN, 2, both_ways=False) == [(1, 0), (1, 1)]
    assert schedule.streams(1000, 2, both_ways=False) == [(1, 0)]


def test_one_host_and_several_links_are_told_from_the_listening_addresses():
    from ringdist.comm import one_host, several_links

    assert one_host([[("127.0.0.1", 5000)], [("127.0.0.1", 5001)]])
    assert one_host([[("127.0.0.1", 5000)], [("127.0.0.2", 5001)], [("::1", 5002)]])
    assert one_host([[("192.0.2.7", 5000)], [("192.0.2.7", 5001)]])
    assert not one_host([[("10.0.0.1", 5000)], [("10.0.0.2", 5001)]])
    assert not one_host([[("127.0.0.1", 5000)], [("10.0.0.2", 5001)]])
    assert not one_host([[("node1", 5000)], [("node2", 5001)]])
    switched = [[(f"10.0.0.{i}", 5000)] for i in range(1, 5)]
    cabled = [[(f"10.1.{i}.2", 5000), (f"10.1.{i}.1", 5000), (f"10.0.0.{i}", 5000)] for i in range(1, 5)]
    assert not several_links(switched) and several_links(cabled)
    assert not several_links([[("127.0.0.1", 5000), ("::1", 5000)], [("127.0.0.1", 5001), ("::1", 5001)]])


@pytest.mark.parametrize("n", range(1, 7))
def test_broadcast_chain_visits_every_rank_once(n):
    for root in range(n):
        for direction in (1, -1):
            visited, rank = [root], root
            while True:
                up, down = schedule.chain_order(rank, n, root, direction)
                if down is None:
                    break
                assert schedule.chain_order(down, n, root, direction)[0] == rank
                visited.append(down)
                rank = down
            assert sorted(visited) == list(range(n))
